"""The audit log: one row per state change (who, what, on what, from where, in which request).

The use case owns the transaction: call ``record`` on the same connection as the change so the
audit row commits or rolls back with it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.infra.correlation import current_correlation_id
from shared.infra.db import Conn, fetch, fetchval
from shared.infra.timefmt import UtcDatetime

INSERT_AUDIT = """
INSERT INTO audit_log (actor, actor_user_id, action, target_type, target_id, metadata, ip, request_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id
"""

SELECT_RECENT = """
SELECT id, occurred_at, actor, actor_user_id, action, target_type, target_id, metadata, ip, request_id
FROM audit_log
WHERE ($1::text IS NULL OR action = $1) AND ($2::text IS NULL OR target_id = $2)
ORDER BY occurred_at DESC, id DESC
LIMIT $3
"""

# The actor of audit rows written by job functions (no human behind them).
WORKER_ACTOR = "system:worker"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row: who (actor, ip, request id) did what (action) to which target, with metadata."""

    id: int
    occurred_at: UtcDatetime
    actor: str
    actor_user_id: uuid.UUID | None
    action: str
    target_type: str | None
    target_id: str | None
    metadata: dict[str, Any]
    ip: str | None
    request_id: str | None


async def record(
    conn: Conn,
    *,
    actor: str,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    actor_user_id: uuid.UUID | None = None,
    ip: str | None = None,
    request_id: str | None = None,
) -> int:
    """Write one audit row; ``request_id`` defaults to the current correlation id."""
    audit_id: int = await fetchval(
        conn,
        "audit_insert",
        INSERT_AUDIT,
        actor,
        actor_user_id,
        action,
        target_type,
        target_id,
        metadata or {},
        ip,
        request_id or current_correlation_id(),
    )
    return audit_id


SELECT_PAGE = """
SELECT id, occurred_at, actor, actor_user_id, action, target_type, target_id, metadata, ip, request_id
FROM audit_log
WHERE ($1::text IS NULL OR action = $1)
  AND ($2::text IS NULL OR actor = $2)
  AND ($3::bigint IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $4
"""

SELECT_FOR_TARGET = """
SELECT id, occurred_at, actor, actor_user_id, action, target_type, target_id, metadata, ip, request_id
FROM audit_log
WHERE target_type = $1 AND target_id = $2
ORDER BY occurred_at DESC, id DESC
LIMIT $3
"""


async def page(
    conn: Conn, *, action: str | None, actor: str | None, before_id: int | None, limit: int
) -> list[AuditEntry]:
    """Newest first by id (identity order = insert order), keyset-paged with ``before_id``."""
    rows = await fetch(conn, "audit_page", SELECT_PAGE, action, actor, before_id, limit)
    return [AuditEntry(**dict(row)) for row in rows]


async def for_target(conn: Conn, *, target_type: str, target_id: str, limit: int = 50) -> list[AuditEntry]:
    """One target's history, newest first (served by ``audit_log_target_idx``)."""
    rows = await fetch(conn, "audit_for_target", SELECT_FOR_TARGET, target_type, target_id, limit)
    return [AuditEntry(**dict(row)) for row in rows]


async def recent(
    conn: Conn, *, action: str | None = None, target_id: str | None = None, limit: int = 100
) -> list[AuditEntry]:
    rows = await fetch(conn, "audit_recent", SELECT_RECENT, action, target_id, limit)
    return [AuditEntry(**dict(row)) for row in rows]

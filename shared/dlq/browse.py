"""Reading the DLQ: entries, keyset pages, groups by fingerprint, one entry in full.

Pages are newest first, ordered by (failed_at, id) descending, and continue strictly after the
cursor's (failed_at, id): new failures arriving meanwhile sort before the cursor, so a walk over
every page never repeats an entry and sees each entry that existed when it started exactly once.
Cursors are opaque and HMAC-signed (``cursor_secret``), so a tampered cursor is a 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Self

import orjson
from msgspec import Meta

from shared.dlq.failure_kinds import FailureKind
from shared.dlq.reasons import DlqReason, Resolution
from shared.infra.db import Conn, fetch, fetchrow
from shared.infra.errors import Invalid, NotFound
from shared.infra.ids import parse_uuid
from shared.infra.timefmt import UtcDatetime
from shared.jobs.queues import ALL_QUEUES, QueueName

MAX_LIMIT = 100
DEFAULT_LIMIT = 20

LIST_COLUMNS = """
    id, queue_name, job_id, function, error_type, error_message, fingerprint, attempts, reason,
    enqueued_at, failed_at, correlation_id, resolved_at, resolved_by, resolution, retry_job_id, retry_of,
    content_escaped
"""


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """A DLQ entry as listed: everything but the payload, the stack trace and the resolution note."""

    id: uuid.UUID
    queue: QueueName
    job_id: str
    function: str
    error_type: str
    error_message: str
    fingerprint: str
    attempts: int
    reason: DlqReason
    enqueued_at: UtcDatetime | None
    failed_at: UtcDatetime
    correlation_id: str | None
    resolved: bool
    resolved_at: UtcDatetime | None
    resolved_by: str | None
    resolution: Resolution | None
    retry_job_id: str | None
    retry_of: uuid.UUID | None
    content_escaped: Annotated[
        bool,
        Meta(
            description="text fields and payload strings are escaped: `\\` doubled, NUL and lone "
            "surrogates as `\\uXXXX` (shared/dlq/content.py)"
        ),
    ]

    @classmethod
    def from_row(cls, row: Any) -> Self:
        """From a row of ``LIST_COLUMNS`` (``DlqEntryDetail``: of ``GET_ENTRY``)."""
        data = dict(row)
        data["queue"] = data.pop("queue_name")
        data["resolved"] = data["resolved_at"] is not None
        return cls(**data)


@dataclass(frozen=True, slots=True)
class DlqEntryDetail(DlqEntry):
    """One entry in full: the payload to replay, the stack trace, the resolution note."""

    args: list[Any] | None
    kwargs: dict[str, Any] | None
    stack_trace: str
    resolution_note: str | None
    payload_omitted: Annotated[
        str | None,
        Meta(
            description="why args/kwargs were not stored (too large, not JSON, a job body no codec "
            "could read); not retryable then"
        ),
    ]
    raw_preview: Annotated[
        str | None,
        Meta(
            description="a job body no codec could read (a foreign pickle, corrupt bytes): base64 of "
            "its first 3,072 bytes (at most 4 KiB); never decoded"
        ),
    ]
    trace_id: Annotated[
        str | None,
        Meta(description="the OpenTelemetry trace the failure was captured in (tracing on), 32 hex digits"),
    ]


@dataclass(frozen=True, slots=True)
class DlqGroup:
    fingerprint: str
    queue: QueueName
    function: str
    error_type: str
    sample_message: str
    count: int
    first_failed_at: UtcDatetime
    last_failed_at: UtcDatetime
    kind: Annotated[
        FailureKind | None,
        Meta(
            description="while the group has unresolved entries: 'new' (first seen) or 'regressed' "
            "(failing again after all its entries were resolved); shared/dlq/failure_kinds.py"
        ),
    ] = None
    kind_at: Annotated[UtcDatetime | None, Meta(description="when it became new or regressed")] = None


@dataclass(frozen=True, slots=True)
class DlqFilter:
    queue: str | None = None
    resolved: bool | None = None
    fingerprint: str | None = None
    q: str | None = None

    def __post_init__(self) -> None:
        if self.queue is not None and self.queue not in ALL_QUEUES:
            raise Invalid(f"queue must be one of {', '.join(ALL_QUEUES)}")
        if self.fingerprint is not None and not (1 <= len(self.fingerprint) <= 64):
            raise Invalid("fingerprint must be 1-64 characters")
        if self.q is not None and not (1 <= len(self.q) <= 200):
            raise Invalid("q must be 1-200 characters")


@dataclass(frozen=True, slots=True)
class DlqPage:
    """A keyset page, newest first; ``next_cursor`` is ``None`` on the last page."""

    items: list[DlqEntry]
    next_cursor: str | None


# -- cursors ---------------------------------------------------------------------------------
def encode_cursor(failed_at: datetime, entry_id: uuid.UUID, secret: bytes) -> str:
    payload = orjson.dumps({"f": failed_at.isoformat(), "i": str(entry_id)})
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + payload).decode().rstrip("=")


def decode_cursor(cursor: str, secret: bytes) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        mac, payload = raw[:16], raw[16:]
        if not hmac.compare_digest(mac, hmac.new(secret, payload, hashlib.sha256).digest()[:16]):
            raise ValueError("signature")
        data = orjson.loads(payload)
        return datetime.fromisoformat(data["f"]), uuid.UUID(data["i"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Invalid("cursor is malformed or was not issued by this server", code="invalid_cursor") from exc


def cursor_secret(seed: str | None) -> bytes:
    """Key for cursor signatures, derived from a deployment secret (a fixed one in dev)."""
    return hashlib.sha256(b"fmhl-dlq-cursor:" + (seed or "fmhl-dev-only").encode()).digest()


# -- queries ---------------------------------------------------------------------------------
_WHERE = """
WHERE ($1::text IS NULL OR queue_name = $1)
  AND ($2::boolean IS NULL OR (resolved_at IS NOT NULL) = $2)
  AND ($3::text IS NULL OR fingerprint = $3)
  AND ($4::text IS NULL OR search @@ websearch_to_tsquery('simple', $4))
"""

LIST_PAGE = f"""
SELECT {LIST_COLUMNS}
FROM dead_letter_queue
{_WHERE}
  AND ($5::timestamptz IS NULL OR (failed_at, id) < ($5, $6::uuid))
ORDER BY failed_at DESC, id DESC
LIMIT $7
"""


async def list_entries(
    conn: Conn, filters: DlqFilter, *, limit: int = DEFAULT_LIMIT, cursor: str | None, secret: bytes
) -> DlqPage:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}")
    after_time, after_id = decode_cursor(cursor, secret) if cursor else (None, None)
    rows = await fetch(
        conn,
        "dlq_list_page",
        LIST_PAGE,
        filters.queue,
        filters.resolved,
        filters.fingerprint,
        filters.q,
        after_time,
        after_id,
        limit + 1,
    )
    items = [DlqEntry.from_row(row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1].failed_at, items[-1].id, secret) if len(rows) > limit else None
    return DlqPage(items, next_cursor)


# Served from the dlq_groups counters (sql/002): O(groups), flat however large the DLQ grows.
# ``count`` is the number of entries in the requested state; first/last seen are for the
# failure as a whole (any state).
GROUPS = """
SELECT fingerprint, queue_name, function, error_type, sample_message, count,
       first_failed_at, last_failed_at, kind, kind_at
FROM (
    SELECT fingerprint, queue_name, function, error_type, sample_message,
           first_failed_at, last_failed_at,
           CASE WHEN unresolved_count > 0 THEN kind END AS kind,
           CASE WHEN unresolved_count > 0 THEN kind_at END AS kind_at,
           CASE WHEN $2::boolean IS NULL THEN unresolved_count + resolved_count
                WHEN $2::boolean THEN resolved_count
                ELSE unresolved_count END AS count
    FROM dlq_groups
    WHERE ($1::text IS NULL OR queue_name = $1)
) AS g
WHERE count > 0
ORDER BY count DESC, last_failed_at DESC
LIMIT $3
"""


async def group_entries(
    conn: Conn, *, queue: str | None, resolved: bool | None, limit: int = 200
) -> list[DlqGroup]:
    DlqFilter(queue=queue)  # validates
    rows = await fetch(conn, "dlq_groups", GROUPS, queue, resolved, limit)
    return [
        DlqGroup(
            fingerprint=row["fingerprint"],
            queue=row["queue_name"],
            function=row["function"],
            error_type=row["error_type"],
            sample_message=row["sample_message"],
            count=int(row["count"]),
            first_failed_at=row["first_failed_at"],
            last_failed_at=row["last_failed_at"],
            kind=row["kind"],
            kind_at=row["kind_at"],
        )
        for row in rows
    ]


GET_ENTRY = f"""
SELECT {LIST_COLUMNS}, args, kwargs, stack_trace, resolution_note, payload_omitted, raw_preview,
       trace_id
FROM dead_letter_queue WHERE id = $1
"""


async def get_entry(conn: Conn, entry_id: uuid.UUID) -> DlqEntryDetail:
    row = await fetchrow(conn, "dlq_get", GET_ENTRY, entry_id)
    if row is None:
        raise NotFound(f"no DLQ entry {entry_id}")
    return DlqEntryDetail.from_row(row)


# The retry chain through one entry: the entries it was retried from (``retry_of``, walking up)
# and the entries its retries produced (walking down), each bounded by ``$2`` steps. Both walks
# use an index (primary key up, ``dlq_retry_of_idx`` down).
LINEAGE = f"""
WITH RECURSIVE up AS (
    SELECT d.retry_of AS id, 1 AS depth FROM dead_letter_queue d WHERE d.id = $1 AND d.retry_of IS NOT NULL
    UNION ALL
    SELECT d.retry_of, up.depth + 1 FROM dead_letter_queue d JOIN up ON d.id = up.id
    WHERE d.retry_of IS NOT NULL AND up.depth < $2
), down AS (
    SELECT d.id, 1 AS depth FROM dead_letter_queue d WHERE d.retry_of = $1
    UNION ALL
    SELECT d.id, down.depth + 1 FROM dead_letter_queue d JOIN down ON d.retry_of = down.id
    WHERE down.depth < $2
)
SELECT {LIST_COLUMNS}, -up.depth AS step FROM dead_letter_queue JOIN up USING (id)
UNION ALL
SELECT {LIST_COLUMNS}, down.depth AS step FROM dead_letter_queue JOIN down USING (id)
ORDER BY step
"""


@dataclass(frozen=True, slots=True)
class Lineage:
    """Oldest ancestor first in ``retried_from``; the entry's own retries, in order, in ``retried_as``."""

    retried_from: list[DlqEntry]
    retried_as: list[DlqEntry]


async def lineage(conn: Conn, entry_id: uuid.UUID, *, max_depth: int = 20) -> Lineage:
    rows = await fetch(conn, "dlq_lineage", LINEAGE, entry_id, max_depth)
    up: list[DlqEntry] = []
    down: list[DlqEntry] = []
    for row in rows:
        data = dict(row)
        step = data.pop("step")
        (up if step < 0 else down).append(DlqEntry.from_row(data))
    return Lineage(retried_from=up, retried_as=down)


GROUP = """
SELECT fingerprint, queue_name,
       (array_agg(function ORDER BY last_failed_at DESC))[1] AS function,
       (array_agg(error_type ORDER BY last_failed_at DESC))[1] AS error_type,
       (array_agg(sample_message ORDER BY last_failed_at DESC))[1] AS sample_message,
       sum(unresolved_count) AS count, min(first_failed_at) AS first_failed_at,
       max(last_failed_at) AS last_failed_at
FROM dlq_groups WHERE queue_name = $1 AND fingerprint = $2
GROUP BY fingerprint, queue_name
"""


async def get_group(conn: Conn, *, queue: str, fingerprint: str) -> DlqGroup:
    """One failure group with its *unresolved* count (what a group action would touch)."""
    DlqFilter(queue=queue, fingerprint=fingerprint)  # validates
    row = await fetchrow(conn, "dlq_group_one", GROUP, queue, fingerprint)
    if row is None:
        raise NotFound(f"no failure group {fingerprint} on {queue}")
    return DlqGroup(
        fingerprint=row["fingerprint"],
        queue=row["queue_name"],
        function=row["function"],
        error_type=row["error_type"],
        sample_message=row["sample_message"],
        count=int(row["count"]),
        first_failed_at=row["first_failed_at"],
        last_failed_at=row["last_failed_at"],
    )


def parse_entry_id(raw: str) -> uuid.UUID:
    entry_id = parse_uuid(raw)
    if entry_id is None:
        raise Invalid("DLQ entry id must be a UUID")
    return entry_id

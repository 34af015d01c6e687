"""Acting on the DLQ: retry one entry, resolve one entry or a group. A bulk redrive is a redrive
task (``shared.redrive_tasks``), which replays each entry through ``replay_locked`` below.

Exactly once under concurrency: each action locks its rows (``FOR UPDATE``; group resolve uses
``SKIP LOCKED`` so concurrent calls take disjoint sets) and only acts on unresolved ones, inside
the transaction that marks them resolved. The job is enqueued inside that transaction with a
deterministic job id (``dlq-retry:<entry id>``): if Redis fails, nothing is marked; if the commit
fails after the enqueue, a second retry finds the same job id and arq refuses a duplicate.
Every state change writes an audit row in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from arq.connections import ArqRedis

from shared import audit
from shared.dlq.browse import DlqEntryDetail, get_entry
from shared.dlq.content import map_strings, unescape_text
from shared.infra.correlation import current_correlation_id
from shared.infra.db import Conn, execute, fetch, fetchrow
from shared.infra.errors import Conflict, DependencyUnavailable, Invalid, NotFound
from shared.infra.metrics import Metrics
from shared.infra.tracing import traced
from shared.jobs.enqueue_once import UniqueCall, enqueue_unique_many
from shared.jobs.queues import ALL_QUEUES, RETRY_OF_KWARG, TRACELINK_KWARG

MAX_BULK = 1000
DEFAULT_BULK = 100


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, from where, for the audit log."""

    name: str
    user_id: uuid.UUID | None = None
    ip: str | None = None


def retry_job_id(entry_id: uuid.UUID) -> str:
    return f"dlq-retry:{entry_id}"


def _original_call(row: Any) -> tuple[str, list[Any], dict[str, Any]]:
    """Function, args and kwargs as the job carried them (``shared.dlq.content``: unescaped)."""
    if row["payload_omitted"] is not None:  # too large, not JSON, or a body no codec could read
        raise Conflict(f"the job's arguments were not stored: {row['payload_omitted']}", code="not_retryable")
    if row["function"] == "<unknown>":
        raise Conflict("this entry has no job payload to replay (it expired in Redis)", code="not_retryable")
    function, args, kwargs = row["function"], list(row["args"] or []), dict(row["kwargs"] or {})
    if row["content_escaped"]:
        function = unescape_text(function)
        args, kwargs = map_strings(args, unescape_text), map_strings(kwargs, unescape_text)
        try:
            orjson.dumps([args, kwargs])
        except TypeError as exc:
            raise Conflict(
                f"the original arguments cannot travel as JSON again ({exc})", code="not_retryable"
            ) from exc
    return function, args, kwargs


def replay_call(row: Any) -> UniqueCall:
    """The replay of an entry (columns of ``LOCK_ONE``) as one job under ``retry_job_id``: the
    original call, ``retry_of`` lineage, a link to the original failure's span. ``Conflict``
    (not_retryable) for an entry without a payload to replay."""
    function, args, original_kwargs = _original_call(row)
    kwargs = original_kwargs | {RETRY_OF_KWARG: str(row["id"])}
    kwargs.pop(TRACELINK_KWARG, None)  # never a stale one from the stored kwargs
    if row["trace_id"] and row["span_id"]:  # the original failure: linked, not parented
        kwargs[TRACELINK_KWARG] = f"00-{row['trace_id']}-{row['span_id']}-01"
    return UniqueCall(
        function, args, kwargs, retry_job_id(row["id"]), row["queue_name"], row["correlation_id"]
    )


async def enqueue_replays(redis: ArqRedis, metrics: Metrics | None, calls: Sequence[UniqueCall]) -> None:
    """Enqueue ``calls`` (from ``replay_call``) in one round trip (arq's de-duplication: a job id
    that exists is refused, atomically); ``DependencyUnavailable`` when Redis fails."""
    try:
        await enqueue_unique_many(redis, calls, metrics=metrics)
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise DependencyUnavailable("redis", "could not enqueue the retry") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            raise DependencyUnavailable("redis", "could not enqueue the retry") from exc
        raise


async def _enqueue_replay(redis: ArqRedis, metrics: Metrics | None, row: Any) -> str:
    call = replay_call(row)
    await enqueue_replays(redis, metrics, [call])
    return call.job_id


LOCK_ONE = """
SELECT id, queue_name, function, args, kwargs, correlation_id, resolved_at, content_escaped,
       payload_omitted, trace_id, span_id
FROM dead_letter_queue WHERE id = $1 FOR UPDATE
"""
MARK_RETRIED = """
UPDATE dead_letter_queue
SET resolved_at = now(), resolved_by = $2, resolution = 'retried', retry_job_id = $3
WHERE id = $1 AND resolved_at IS NULL
"""


@traced("dlq redrive")
async def retry_entry(
    pool: Any, redis: ArqRedis, metrics: Metrics | None, entry_id: uuid.UUID, actor: Actor
) -> str:
    """Re-enqueue the original call; returns the new job id. 404 unknown, 409 already resolved."""
    async with pool.acquire() as conn, conn.transaction():
        row = await fetchrow(conn, "dlq_lock_for_retry", LOCK_ONE, entry_id)
        if row is None:
            raise NotFound(f"no DLQ entry {entry_id}")
        if row["resolved_at"] is not None:
            raise Conflict("this DLQ entry is already resolved", code="already_resolved")
        return await replay_locked(conn, redis, metrics, row, actor, {"function": row["function"]})


async def replay_locked(
    conn: Conn, redis: ArqRedis, metrics: Metrics | None, row: Any, actor: Actor, metadata: dict[str, Any]
) -> str:
    """Enqueue the replay of an unresolved entry whose row ``conn``'s transaction has locked
    (columns of ``LOCK_ONE``), mark it retried and audit it; returns the job id. The caller owns
    the transaction and has checked ``resolved_at IS NULL``. Raises ``Conflict`` (not_retryable)
    for an entry without a payload to replay, ``DependencyUnavailable`` when Redis is down."""
    job_id = await _enqueue_replay(redis, metrics, row)
    await execute(conn, "dlq_mark_retried", MARK_RETRIED, row["id"], actor.name, job_id)
    await _audit(conn, actor, "dlq.retry", row["id"], {"job_id": job_id, **metadata})
    return job_id


MARK_MANY_RETRIED = """
UPDATE dead_letter_queue
SET resolved_at = now(), resolved_by = $2, resolution = 'retried', retry_job_id = 'dlq-retry:' || id::text
WHERE id = ANY($1::uuid[]) AND resolved_at IS NULL
"""
AUDIT_MANY_RETRIED = """
INSERT INTO audit_log (actor, action, target_type, target_id, metadata, request_id)
SELECT $2, 'dlq.retry', 'dlq_entry', e.id::text,
       $3::jsonb || jsonb_build_object('job_id', 'dlq-retry:' || e.id::text), $4
FROM unnest($1::uuid[]) AS e(id)
"""


async def mark_replayed(
    conn: Conn, entry_ids: Sequence[uuid.UUID], actor: Actor, metadata: dict[str, Any]
) -> None:
    """``replay_locked``'s marking half for many entries enqueued by ``enqueue_replays``: each
    resolved ``retried`` with its job id and audited (``dlq.retry``), in two statements."""
    ids = list(entry_ids)
    await execute(conn, "dlq_mark_many_retried", MARK_MANY_RETRIED, ids, actor.name)
    await execute(
        conn,
        "dlq_audit_many_retried",
        AUDIT_MANY_RETRIED,
        ids,
        actor.name,
        metadata,
        current_correlation_id(),
    )


RESOLVE = """
UPDATE dead_letter_queue
SET resolved_at = now(), resolved_by = $2, resolution = 'manual', resolution_note = $3
WHERE id = $1 AND resolved_at IS NULL
RETURNING id
"""
EXISTS = "SELECT 1 FROM dead_letter_queue WHERE id = $1"


async def resolve_entry(pool: Any, entry_id: uuid.UUID, actor: Actor, note: str | None) -> DlqEntryDetail:
    if note is not None and len(note) > 2000:
        raise Invalid("note must be at most 2000 characters")
    async with pool.acquire() as conn, conn.transaction():
        updated = await fetchrow(conn, "dlq_resolve", RESOLVE, entry_id, actor.name, note)
        if updated is None:
            if await fetchrow(conn, "dlq_exists", EXISTS, entry_id) is None:
                raise NotFound(f"no DLQ entry {entry_id}")
            raise Conflict("this DLQ entry is already resolved", code="already_resolved")
        await _audit(conn, actor, "dlq.resolve", entry_id, {"note": note})
        return await get_entry(conn, entry_id)


RESOLVE_BY_FINGERPRINT = """
WITH picked AS (
    SELECT id FROM dead_letter_queue
    WHERE queue_name = $1 AND fingerprint = $2 AND resolved_at IS NULL
    ORDER BY failed_at, id
    LIMIT $5
    FOR UPDATE SKIP LOCKED
)
UPDATE dead_letter_queue AS d
SET resolved_at = now(), resolved_by = $3, resolution = 'manual', resolution_note = $4
FROM picked WHERE d.id = picked.id
RETURNING d.id
"""


async def resolve_group(
    pool: Any,
    actor: Actor,
    *,
    queue: str,
    fingerprint: str,
    note: str | None,
    max_entries: int = MAX_BULK,
) -> list[uuid.UUID]:
    """Resolve by hand up to ``max_entries`` unresolved entries of one failure group.

    One statement (``SKIP LOCKED``: concurrent calls take disjoint entries), one audit row per
    entry (so each entry's history shows it) and one for the group action, in one transaction.
    """
    if queue not in ALL_QUEUES:
        raise Invalid(f"queue must be one of {', '.join(ALL_QUEUES)}")
    if not 1 <= max_entries <= MAX_BULK:
        raise Invalid(f"max must be between 1 and {MAX_BULK}")
    if note is not None and len(note) > 2000:
        raise Invalid("note must be at most 2000 characters")
    async with pool.acquire() as conn, conn.transaction():
        rows = await fetch(
            conn,
            "dlq_resolve_group",
            RESOLVE_BY_FINGERPRINT,
            queue,
            fingerprint,
            actor.name,
            note,
            max_entries,
        )
        entry_ids = [row["id"] for row in rows]
        for entry_id in entry_ids:
            await _audit(conn, actor, "dlq.resolve", entry_id, {"note": note, "bulk": True})
        await audit.record(
            conn,
            actor=actor.name,
            actor_user_id=actor.user_id,
            ip=actor.ip,
            action="dlq.bulk_resolve",
            target_type="dlq_fingerprint",
            target_id=fingerprint,
            metadata={"queue": queue, "resolved": len(entry_ids), "max": max_entries, "note": note},
        )
    return entry_ids


async def _audit(
    conn: Conn, actor: Actor, action: str, entry_id: uuid.UUID, metadata: dict[str, Any]
) -> None:
    await audit.record(
        conn,
        actor=actor.name,
        actor_user_id=actor.user_id,
        ip=actor.ip,
        action=action,
        target_type="dlq_entry",
        target_id=str(entry_id),
        metadata=metadata,
    )

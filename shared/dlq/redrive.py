"""Acting on the DLQ: retry one entry, resolve one entry, bulk redrive.

Exactly once under concurrency: each action locks its rows (``FOR UPDATE``; bulk uses ``SKIP
LOCKED`` so concurrent bulk calls take disjoint sets) and only acts on unresolved ones, inside
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
from shared.infra.db import Conn, execute, fetch, fetchrow
from shared.infra.errors import Conflict, DependencyUnavailable, Invalid, NotFound
from shared.infra.metrics import Metrics
from shared.infra.tracing import traced
from shared.jobs.enqueue import enqueue_call
from shared.jobs.queues import ALL_QUEUES, RETRY_OF_KWARG, TRACELINK_KWARG

MAX_BULK = 1000
DEFAULT_BULK = 100


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts, from where, for the audit log."""

    name: str
    user_id: uuid.UUID | None = None
    ip: str | None = None


@dataclass(frozen=True, slots=True)
class BulkRetryResult:
    retried: int
    job_ids: list[str]
    entry_ids: list[uuid.UUID]


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


async def _enqueue_replay(redis: ArqRedis, metrics: Metrics | None, row: Any) -> str:
    function, args, original_kwargs = _original_call(row)
    kwargs = original_kwargs | {RETRY_OF_KWARG: str(row["id"])}
    kwargs.pop(TRACELINK_KWARG, None)  # never a stale one from the stored kwargs
    if row["trace_id"] and row["span_id"]:  # the original failure: linked, not parented
        kwargs[TRACELINK_KWARG] = f"00-{row['trace_id']}-{row['span_id']}-01"
    job_id = retry_job_id(row["id"])
    try:
        await enqueue_call(
            redis,
            function,
            args=args,
            kwargs=kwargs,
            metrics=metrics,
            job_id=job_id,
            queue=row["queue_name"],
            correlation_id=row["correlation_id"],
        )
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise DependencyUnavailable("redis", "could not enqueue the retry") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            raise DependencyUnavailable("redis", "could not enqueue the retry") from exc
        raise
    return job_id


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
        job_id = await _enqueue_replay(redis, metrics, row)
        await execute(conn, "dlq_mark_retried", MARK_RETRIED, entry_id, actor.name, job_id)
        await _audit(conn, actor, "dlq.retry", entry_id, {"job_id": job_id, "function": row["function"]})
    return job_id


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


# Entries with no payload to replay (function '<unknown>': the job expired in Redis; or
# ``payload_omitted``: too large or not JSON, shared.dlq.content) are left out
# of the locking query itself, not skipped after it: otherwise, being the oldest, they would use
# up ``max`` on every call and a group holding ``max`` of them could never be redriven.
LOCK_BY_IDS = """
SELECT id, queue_name, function, args, kwargs, correlation_id, resolved_at, content_escaped,
       payload_omitted, trace_id, span_id
FROM dead_letter_queue
WHERE id = ANY($1::uuid[]) AND resolved_at IS NULL AND function <> '<unknown>'
  AND payload_omitted IS NULL
ORDER BY failed_at, id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
LOCK_BY_FINGERPRINT = """
SELECT id, queue_name, function, args, kwargs, correlation_id, resolved_at, content_escaped,
       payload_omitted, trace_id, span_id
FROM dead_letter_queue
WHERE queue_name = $1 AND fingerprint = $2 AND resolved_at IS NULL AND function <> '<unknown>'
  AND payload_omitted IS NULL
ORDER BY failed_at, id
LIMIT $3
FOR UPDATE SKIP LOCKED
"""


@traced("dlq redrive")
async def bulk_retry(
    pool: Any,
    redis: ArqRedis,
    metrics: Metrics | None,
    actor: Actor,
    *,
    ids: Sequence[uuid.UUID] | None = None,
    queue: str | None = None,
    fingerprint: str | None = None,
    max_entries: int = DEFAULT_BULK,
) -> BulkRetryResult:
    """Retry many unresolved entries, each exactly once even when bulk calls race."""
    if not 1 <= max_entries <= MAX_BULK:
        raise Invalid(f"max must be between 1 and {MAX_BULK}")
    by_filter = queue is not None or fingerprint is not None
    if (ids is not None) == by_filter or (by_filter and (queue is None or fingerprint is None)):
        raise Invalid('give either "ids" or both "queue" and "fingerprint"')
    if queue is not None and queue not in ALL_QUEUES:
        raise Invalid(f"queue must be one of {', '.join(ALL_QUEUES)}")
    if ids is not None and not 1 <= len(ids) <= MAX_BULK:
        raise Invalid(f"ids must hold 1 to {MAX_BULK} entries")
    async with pool.acquire() as conn, conn.transaction():
        if ids is not None:
            rows = await fetch(conn, "dlq_lock_bulk_ids", LOCK_BY_IDS, list(ids), max_entries)
        else:
            rows = await fetch(conn, "dlq_lock_bulk_fp", LOCK_BY_FINGERPRINT, queue, fingerprint, max_entries)
        job_ids: list[str] = []
        entry_ids: list[uuid.UUID] = []
        for row in rows:
            job_id = await _enqueue_replay(redis, metrics, row)
            await execute(conn, "dlq_mark_retried", MARK_RETRIED, row["id"], actor.name, job_id)
            await _audit(conn, actor, "dlq.retry", row["id"], {"job_id": job_id, "bulk": True})
            job_ids.append(job_id)
            entry_ids.append(row["id"])
        await audit.record(
            conn,
            actor=actor.name,
            actor_user_id=actor.user_id,
            ip=actor.ip,
            action="dlq.bulk_retry",
            target_type="dlq_fingerprint" if fingerprint else "dlq_entries",
            target_id=fingerprint,
            metadata={
                "queue": queue,
                "retried": len(job_ids),
                "requested_ids": len(ids or []),
                "max": max_entries,
            },
        )
    return BulkRetryResult(len(job_ids), job_ids, entry_ids)


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

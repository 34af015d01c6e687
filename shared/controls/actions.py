"""Acting on one live job: cancel, abort, run now; and bulk cancel by queue + function.

Each action is exactly once under concurrent calls: a Lua script checks the job's state and
changes it in one atomic step, so of two simultaneous clicks one wins and the other gets
``Conflict``. Each is audited (actor, action, target ``job`` ``{queue}:{job_id}``, reason) in the
caller's connection: the audit row is written first in a transaction that rolls back if the
script refuses, so a refused action leaves no row.

* ``cancel_job`` — a queued, scheduled or retrying job is removed from the queue with its keys,
  and recorded: a DLQ row with reason ``cancelled``, resolved at once (``shared.controls.records``),
  in the same transaction as the audit row. A tombstone (``fmhl:job:ended:{job_id}``) tells a
  second cancel "already cancelled" (409) rather than "unknown" (404), and tells a worker that
  raced us to the job (arq saw it due a moment before) not to capture it as ``expired``.
  A running job is refused (abort it instead).
* ``abort_job`` — a running job: the request (``fmhl:job:abort:{job_id}``: who, why) and arq's abort
  set. The worker running it cancels its task within about a poll (``allow_abort_jobs``), then
  records it itself (reason ``aborted``, resolved at once; the failure decorator does not capture
  it as a failure). If the job ends on its own first, no ``aborted`` row appears: the audit row
  says what was asked, the DLQ only what happened.
* ``run_job_now`` — a scheduled or retrying job becomes due now (its queue score set to now).
* ``bulk_cancel`` — every queued/scheduled/retrying job of one function on one queue, each
  through the same script (each exactly once, each recorded), up to ``max`` jobs, found by
  walking the queue zset in pages (never a keyspace scan). Running jobs are skipped.

If Postgres fails after the script removed a job (the commit, say), the cancel record goes to the
capture path (spool) before the error propagates: a removed job always leaves a trace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix

from shared import audit
from shared.controls.live import check_queue
from shared.controls.pause import clean_reason
from shared.controls.records import EndedJob, ended_from_definition, insert_ended, record_ended_job
from shared.dlq.reasons import CANCELLED
from shared.infra.db import Conn
from shared.infra.errors import Conflict, Invalid, NotFound
from shared.infra.logs import log_event
from shared.infra.redis import (
    RedisClient,
    job_abort_key,
    job_ended_key,
    job_last_error_key,
    retrying_index_key,
)

ACTION_CANCEL = "job.cancel"
ACTION_ABORT = "job.abort"
ACTION_RUN_NOW = "job.run_now"
ACTION_BULK_CANCEL = "job.bulk_cancel"
CONTROL_KEY_TTL_SECONDS = 86_400
BULK_CANCEL_MAX = 10_000
BULK_PAGE = 500

# KEYS: queue, job, in-progress, retry, retrying index, last error, ended. ARGV: job id, tombstone.
_CANCEL = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return {'missing'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'running'} end
local definition = redis.call('GET', KEYS[2]) or ''
local tries = redis.call('GET', KEYS[4]) or '0'
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[4], KEYS[6])
redis.call('SET', KEYS[7], ARGV[2], 'EX', ARGV[3])
return {'ok', definition, tries}
"""

# KEYS: queue, in-progress, abort request, arq abort set. ARGV: job id, request, now ms, ttl.
_ABORT = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'missing' end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'not_running' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'aborting' end
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 'ok'
"""

# KEYS: queue, in-progress, retrying index. ARGV: job id. "Now" is Redis's clock, one for every
# caller: with each caller's own clock, a later call whose clock lags could promote it again.
_RUN_NOW = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 'missing' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'running' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) <= now then return 'due' end
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
redis.call('ZADD', KEYS[3], 'XX', now, ARGV[1])
return 'ok'
"""


@dataclass(frozen=True, slots=True)
class JobActionResult:
    queue: str
    job_id: str
    action: str
    by: str
    reason: str
    at: datetime
    dlq_id: str | None = None


@dataclass(frozen=True, slots=True)
class BulkCancelled:
    queue: str
    function: str
    cancelled: int
    job_ids: tuple[str, ...]
    skipped_running: int


async def _audit(
    conn: Conn,
    action: str,
    queue: str,
    job_id: str,
    actor: str,
    note: str,
    actor_user_id: Any,
    ip: str | None,
) -> None:
    """The audit row of one action on one job (target ``job`` ``{queue}:{job_id}``)."""
    await audit.record(
        conn,
        actor=actor,
        actor_user_id=actor_user_id,
        action=action,
        target_type="job",
        target_id=f"{queue}:{job_id}",
        metadata={"reason": note},
        ip=ip,
    )


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _gone(redis: RedisClient, queue: str, job_id: str) -> Exception:
    """Conflict when an operator already ended this job, else NotFound."""
    ended = await redis.get(job_ended_key(job_id))
    if ended:
        info = orjson.loads(ended)
        return Conflict(
            f"job {job_id} was already {info.get('action', 'ended')} by {info.get('by')}",
            code="already_ended",
        )
    return NotFound(f"no live job {job_id!r} in queue {queue}", code="job_not_found")


async def _remove(redis: RedisClient, queue: str, job_id: str, actor: str) -> tuple[str, bytes | None, int]:
    tombstone = orjson.dumps({"action": "cancelled", "by": actor, "at": datetime.now(UTC).isoformat()})
    reply = await redis.eval(
        _CANCEL,
        7,
        queue,
        job_key_prefix + job_id,
        in_progress_key_prefix + job_id,
        retry_key_prefix + job_id,
        retrying_index_key(queue),
        job_last_error_key(job_id),
        job_ended_key(job_id),
        job_id,
        tombstone,
        CONTROL_KEY_TTL_SECONDS,
    )
    status = _decode(reply[0])
    if status != "ok":
        return status, None, 0
    definition = reply[1] if reply[1] else None
    return status, definition, int(_decode(reply[2]) or 0)


async def cancel_job(
    conn: Conn,
    redis: RedisClient,
    *,
    queue: str,
    job_id: str,
    actor: str,
    reason: str | None = None,
    actor_user_id: Any = None,
    ip: str | None = None,
) -> JobActionResult:
    """Cancel a queued, scheduled or retrying job: removed, audited, recorded (``cancelled``)."""
    check_queue(queue)
    note = clean_reason(reason, required=False)
    ended: EndedJob | None = None
    try:
        async with conn.transaction():
            await _audit(conn, ACTION_CANCEL, queue, job_id, actor, note, actor_user_id, ip)
            status, definition, tries = await _remove(redis, queue, job_id, actor)
            if status == "running":
                raise Conflict(f"job {job_id} is running: abort it instead", code="job_running")
            if status != "ok":
                raise await _gone(redis, queue, job_id)
            ended = ended_from_definition(
                queue=queue,
                job_id=job_id,
                definition=definition,
                tries=tries,
                reason=CANCELLED,
                actor=actor,
                note=note,
            )
            dlq_id = await insert_ended(conn, ended)
    except Exception:
        if ended is not None:  # removed from Redis but not committed: keep the trace
            await record_ended_job(None, redis, ended)
        raise
    log_event("WARNING", "job_cancelled", queue=queue, job_id=job_id, function=ended.function, actor=actor)
    return JobActionResult(
        queue, job_id, "cancelled", actor, note, ended.ended_at, str(dlq_id) if dlq_id else None
    )


async def abort_job(
    conn: Conn,
    redis: RedisClient,
    *,
    queue: str,
    job_id: str,
    actor: str,
    reason: str | None = None,
    actor_user_id: Any = None,
    ip: str | None = None,
) -> JobActionResult:
    """Ask the worker running ``job_id`` to cancel it (arq's abort); audited. The worker records
    the ``aborted`` DLQ row when it has cancelled the task."""
    check_queue(queue)
    note = clean_reason(reason, required=False)
    now = datetime.now(UTC)
    request = orjson.dumps({"by": actor, "reason": note, "at": now.isoformat()})
    async with conn.transaction():
        await _audit(conn, ACTION_ABORT, queue, job_id, actor, note, actor_user_id, ip)
        status = _decode(
            await redis.eval(
                _ABORT,
                4,
                queue,
                in_progress_key_prefix + job_id,
                job_abort_key(job_id),
                abort_jobs_ss,
                job_id,
                request,
                int(time.time() * 1000),
                CONTROL_KEY_TTL_SECONDS,
            )
        )
        if status == "aborting":
            raise Conflict(f"job {job_id} is already being aborted", code="already_aborting")
        if status == "not_running":
            raise Conflict(f"job {job_id} is not running: cancel it instead", code="job_not_running")
        if status != "ok":
            raise await _gone(redis, queue, job_id)
    log_event("WARNING", "job_abort_requested", queue=queue, job_id=job_id, actor=actor)
    return JobActionResult(queue, job_id, "abort_requested", actor, note, now)


async def run_job_now(
    conn: Conn,
    redis: RedisClient,
    *,
    queue: str,
    job_id: str,
    actor: str,
    reason: str | None = None,
    actor_user_id: Any = None,
    ip: str | None = None,
) -> JobActionResult:
    """Make a scheduled or retrying job due now (bull-board's promote)."""
    check_queue(queue)
    note = clean_reason(reason, required=False)
    now = datetime.now(UTC)
    async with conn.transaction():
        await _audit(conn, ACTION_RUN_NOW, queue, job_id, actor, note, actor_user_id, ip)
        status = _decode(
            await redis.eval(
                _RUN_NOW,
                3,
                queue,
                in_progress_key_prefix + job_id,
                retrying_index_key(queue),
                job_id,
            )
        )
        if status == "running":
            raise Conflict(f"job {job_id} is running", code="job_running")
        if status == "due":
            raise Conflict(f"job {job_id} is already due (queued)", code="already_due")
        if status != "ok":
            raise await _gone(redis, queue, job_id)
    log_event("INFO", "job_run_now", queue=queue, job_id=job_id, actor=actor)
    return JobActionResult(queue, job_id, "run_now", actor, note, now)


async def bulk_cancel(
    conn: Conn,
    redis: RedisClient,
    *,
    queue: str,
    function: str,
    actor: str,
    reason: str,
    max_jobs: int = BULK_CANCEL_MAX,
    actor_user_id: Any = None,
    ip: str | None = None,
) -> BulkCancelled:
    """Cancel every waiting job of ``function`` on ``queue`` (up to ``max_jobs``), each recorded.

    The reason is required (a bulk action is confirmed like the DLQ group actions). One audit row
    for the request with the count, plus each job's own ``cancelled`` DLQ row.
    """
    check_queue(queue)
    note = clean_reason(reason, required=True)
    if not 1 <= max_jobs <= BULK_CANCEL_MAX:
        raise Invalid(f"max must be between 1 and {BULK_CANCEL_MAX}", code="invalid_max")
    if not function:
        raise Invalid("function is required", code="function_required")
    cancelled: list[str] = []
    skipped = 0
    offset = 0
    while len(cancelled) < max_jobs:
        page = await _queue_page(redis, queue, offset)
        if not page:
            break
        removed_here = 0
        for job_id, job_function, _running in page:
            if len(cancelled) >= max_jobs:
                break
            if job_function != function:
                continue
            try:
                await cancel_job(
                    conn,
                    redis,
                    queue=queue,
                    job_id=job_id,
                    actor=actor,
                    reason=note,
                    actor_user_id=actor_user_id,
                    ip=ip,
                )
            except Conflict as exc:
                skipped += exc.code == "job_running"
                continue
            except NotFound:
                continue  # finished meanwhile
            cancelled.append(job_id)
            removed_here += 1
        offset += len(page) - removed_here  # removed members shifted the ranks down
    await audit.record(
        conn,
        actor=actor,
        actor_user_id=actor_user_id,
        action=ACTION_BULK_CANCEL,
        target_type="queue",
        target_id=queue,
        metadata={"reason": note, "function": function, "cancelled": len(cancelled), "max": max_jobs},
        ip=ip,
    )
    log_event(
        "WARNING", "jobs_bulk_cancelled", queue=queue, function=function, count=len(cancelled), actor=actor
    )
    return BulkCancelled(queue, function, len(cancelled), tuple(cancelled), skipped)


@dataclass(frozen=True, slots=True)
class WaitingCount:
    """Waiting (not running) jobs of one function, as a bulk cancel's confirmation shows them."""

    queue: str
    function: str
    count: int
    # True when the walk stopped at ``max_count`` matches or ``max_scan`` members: "at least"
    capped: bool


async def count_waiting(
    redis: RedisClient,
    *,
    queue: str,
    function: str,
    max_count: int = BULK_CANCEL_MAX,
    max_scan: int = 200_000,
) -> WaitingCount:
    """How many queued/scheduled/retrying jobs of ``function`` a bulk cancel would take, walking
    the queue zset in pages (never a keyspace scan), bounded by ``max_count`` and ``max_scan``."""
    check_queue(queue)
    count = scanned = 0
    offset = 0
    while count < max_count and scanned < max_scan:
        page = await _queue_page(redis, queue, offset)
        if not page:
            return WaitingCount(queue, function, count, False)
        count += sum(1 for _, job_function, running in page if job_function == function and not running)
        scanned += len(page)
        offset += len(page)
    return WaitingCount(queue, function, min(count, max_count), True)


async def _queue_page(redis: RedisClient, queue: str, offset: int) -> list[tuple[str, str | None, bool]]:
    """``BULK_PAGE`` members of the queue zset from rank ``offset``, each as (job id, function or
    ``None`` when its definition is gone or undecodable, running), in one round trip after the page."""
    members = await redis.zrange(queue, offset, offset + BULK_PAGE - 1)
    if not members:
        return []
    ids = [m.decode() for m in members]
    pipe = redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.get(job_key_prefix + job_id)
        pipe.exists(in_progress_key_prefix + job_id)
    replies = await pipe.execute()
    return [
        (job_id, _function_of(replies[2 * n]) if replies[2 * n] else None, bool(replies[2 * n + 1]))
        for n, job_id in enumerate(ids)
    ]


def _function_of(definition: bytes) -> str | None:
    try:
        data = orjson.loads(definition)
    except ValueError:
        return None
    return str(data.get("f")) if isinstance(data, dict) else None

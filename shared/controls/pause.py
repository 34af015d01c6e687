"""Pausing a job queue: its workers, on any host, stop *starting* jobs until it is resumed.

The state is one Redis key per queue, ``fmhl:queue:paused:{queue}``, holding who paused it, why
and since when. It lives in Redis (not in a worker's memory), so a worker started while its queue
is paused stays idle, and every worker of the queue sees the same state.

Invariants:

* exactly once: pausing a paused queue, or resuming a running one, is a ``Conflict`` (the Redis
  ``SET NX`` / compare-and-delete decides, so two concurrent calls cannot both win);
* audited: each change writes one audit row (``queue.pause`` / ``queue.resume``, target the
  queue, metadata the reason) in the caller's connection; the row is written first and the
  transaction rolls back if Redis refuses the change;
* only the three job queues pause. ``scheduler`` is refused (``Invalid``): cron and the DLQ spool
  drain must never stop by accident;
* a pause stops *starting* jobs only: running jobs finish, enqueueing keeps working, queued jobs
  burn no try (a job not started is not tried). Readiness does not look at it.

Workers read the key through ``shared.jobs.pause_state.PauseGate``, at most every
``PAUSE_REFRESH_SECONDS``, so a pause takes effect within that interval plus one poll.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared import audit
from shared.infra.db import Conn
from shared.infra.errors import Conflict, Invalid
from shared.infra.logs import log_event
from shared.infra.redis import RedisClient, queue_paused_key
from shared.jobs.pause_state import PauseState, read_pause
from shared.jobs.queues import JOB_QUEUES, SCHEDULER

REASON_MAX_CHARS = 500
ACTION_PAUSE = "queue.pause"
ACTION_RESUME = "queue.resume"

# Deletes the key only if it still holds the state we read (a resume racing a resume → one wins).
_COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def check_pausable(queue: str) -> None:
    if queue == SCHEDULER:
        raise Invalid(
            "the scheduler queue cannot be paused: cron jobs and the DLQ spool drain run there",
            code="queue_not_pausable",
        )
    if queue not in JOB_QUEUES:
        raise Invalid(
            f"unknown queue {queue!r}; expected one of {', '.join(JOB_QUEUES)}", code="unknown_queue"
        )


def clean_reason(reason: str | None, *, required: bool) -> str:
    text = (reason or "").strip()
    if required and not text:
        raise Invalid("a reason is required", code="reason_required")
    if len(text) > REASON_MAX_CHARS:
        raise Invalid(f"the reason is longer than {REASON_MAX_CHARS} characters", code="reason_too_long")
    return text


async def pause_queue(
    conn: Conn,
    redis: RedisClient,
    *,
    queue: str,
    actor: str,
    reason: str,
    actor_user_id: Any = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> PauseState:
    """Pause ``queue``; ``Conflict`` (code ``already_paused``) when it already is."""
    check_pausable(queue)
    state = PauseState(by=actor, reason=clean_reason(reason, required=True), since=now or datetime.now(UTC))
    key, encoded = queue_paused_key(queue), state.encode()
    ours = False
    try:
        async with conn.transaction():
            await audit.record(
                conn,
                actor=actor,
                actor_user_id=actor_user_id,
                action=ACTION_PAUSE,
                target_type="queue",
                target_id=queue,
                metadata={"reason": state.reason},
                ip=ip,
            )
            ours = bool(await redis.set(key, encoded, nx=True))
            if not ours:
                current = await read_pause(redis, queue)
                since = f" since {current.since.isoformat()} by {current.by}" if current else ""
                raise Conflict(f"queue {queue} is already paused{since}", code="already_paused")
    except BaseException:
        if ours:  # the audit row did not commit: take our pause back, none without its record
            await redis.eval(_COMPARE_AND_DELETE, 1, key, encoded)
        raise
    log_event("WARNING", "queue_paused", queue=queue, actor=actor, reason=state.reason)
    return state


async def resume_queue(
    conn: Conn,
    redis: RedisClient,
    *,
    queue: str,
    actor: str,
    reason: str | None = None,
    actor_user_id: Any = None,
    ip: str | None = None,
) -> PauseState:
    """Resume ``queue`` and return the pause that ended; ``Conflict`` (``not_paused``) if none."""
    check_pausable(queue)
    note = clean_reason(reason, required=False)
    key = queue_paused_key(queue)
    raw = await redis.get(key)
    if not raw:
        raise Conflict(f"queue {queue} is not paused", code="not_paused")
    ended = PauseState.decode(raw)
    async with conn.transaction():
        paused_s = round((datetime.now(UTC) - ended.since).total_seconds(), 3)
        await audit.record(
            conn,
            actor=actor,
            actor_user_id=actor_user_id,
            action=ACTION_RESUME,
            target_type="queue",
            target_id=queue,
            metadata={"reason": note, "paused_by": ended.by, "paused_for_seconds": paused_s},
            ip=ip,
        )
        if not await redis.eval(_COMPARE_AND_DELETE, 1, key, raw):
            raise Conflict(f"queue {queue} is not paused", code="not_paused")
    log_event("INFO", "queue_resumed", queue=queue, actor=actor, paused_for_s=paused_s)
    return ended

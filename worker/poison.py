"""Poison-job quarantine: a job whose tries keep killing their worker is not run again.

A job that kills its worker (OOM, segfault, SIGKILL) writes nothing on its way out; arq picks it
up again once its in-progress lock expires, on every try, so with 5 tries it took down 5 workers
in a row before the silent path captured it as ``worker_lost`` (and a Deployment of such pods
crash-looped). Here, at pickup of try *n* > 1, the failure decorator asks how try *n - 1* ended:

* ``Retry`` (a transient error): the retry trace ``fmhl:job:last_error:{id}`` names try *n - 1*;
* cancelled (shutdown past ``job_completion_wait``): the cancelled-try marker names try *n - 1*;
* otherwise it *vanished* with its worker: ``fmhl:job:lost_tries:{id}`` is incremented.

When the count reaches ``POISON_AFTER_LOST_TRIES`` (default 2) the job is captured into the DLQ
with reason ``poison`` instead of being run (``fmhl_jobs_quarantined_total`` counts it; alert
``PoisonJobQuarantined``), and arq records it as failed so no worker picks it again. A first try
costs nothing (no Redis round trip); a later try one pipelined read. A job that reached
``max_tries`` first keeps arq's silent path (``worker_lost``). Reading fails → the job runs
(the quarantine only spares workers; it must never lose a job). A job's counter is deleted when a
try of it ends (success or failure), so a job id used again later starts from zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.dlq.capture import capture
from shared.infra.cancellation import run_to_end
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.infra.redis import RedisClient, cancelled_job_key, job_last_error_key, job_lost_tries_key
from shared.jobs.retry_trace import LastError
from worker.failure_records import record_from_silent_failure

LOST_TRIES_TTL_SECONDS = 86_400
POISON_CHECK_TIMEOUT_SECONDS = 1.0
DEFAULT_POISON_AFTER_LOST_TRIES = 2


class PoisonJob(Exception):
    """Raised instead of running a quarantined job, so arq records it as failed (never retried)."""


@dataclass(frozen=True, slots=True)
class PickupCheck:
    lost_tries: int  # tries of this job that vanished with their worker, the previous one included
    quarantine: bool
    poisoned: PoisonJob | None = None  # set once quarantined: raise it instead of running the job


async def at_pickup(
    ctx: dict[str, Any],
    *,
    queue: str,
    function: str,
    args: tuple[Any, ...],
    raw_kwargs: dict[str, Any],
    max_tries: int,
) -> PickupCheck:
    """The failure decorator's first step: count a vanished previous try; quarantine if due."""
    settings = ctx.get("settings")
    threshold = settings.poison_after_lost_tries if settings else DEFAULT_POISON_AFTER_LOST_TRIES
    job_id, job_try = str(ctx.get("job_id")), int(ctx.get("job_try", 1))
    check = await check_pickup(ctx.get("redis"), job_id, job_try, threshold)
    if not check.quarantine:
        return check
    poisoned = await quarantine(
        ctx,
        queue=queue,
        function=function,
        args=args,
        raw_kwargs=raw_kwargs,
        job_id=job_id,
        job_try=job_try,
        max_tries=max_tries,
        lost_tries=check.lost_tries,
    )
    return PickupCheck(check.lost_tries, True, poisoned)


async def at_end_of_try(
    redis: RedisClient | None, job_id: str, check: PickupCheck, *, job_goes_on: bool
) -> None:
    """The job ended (success or final failure) after vanished tries: forget them, so a job id
    used again later starts from zero. Nothing to do on the normal path."""
    if check.lost_tries and not job_goes_on:
        # not cut short by arq's timeout either: its cancel here would turn a finished try
        # (success or captured failure) into arq's "failed, TimeoutError"
        await run_to_end(forget_lost_tries(redis, job_id))


def initialise_metrics(metrics: Metrics, queue: str, functions: Iterable[str]) -> None:
    """Export ``fmhl_jobs_quarantined_total`` at 0 for each function from the start, so the first
    quarantine is an increase Prometheus sees (and the series exists before anything goes wrong)."""
    for function in functions:
        metrics.inc(metrics.jobs_quarantined_total, {"queue": queue, "function": function}, 0)


async def check_pickup(redis: RedisClient | None, job_id: str, job_try: int, threshold: int) -> PickupCheck:
    """How many tries of the job vanished so far; whether to quarantine it now. Never raises."""
    if redis is None or job_try <= 1:
        return PickupCheck(0, False)
    previous = job_try - 1
    try:
        async with asyncio.timeout(POISON_CHECK_TIMEOUT_SECONDS):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.get(job_last_error_key(job_id))
                pipe.get(cancelled_job_key(job_id))
                pipe.get(job_lost_tries_key(job_id))
                last_raw, cancelled_raw, lost_raw = await pipe.execute()
            last = LastError.decode(last_raw) if last_raw else None
            retried = last is not None and last.job_try == previous
            cancelled = cancelled_raw is not None and _text(cancelled_raw) == str(previous)
            if retried or cancelled:
                lost = int(lost_raw or 0)
            else:
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.incr(job_lost_tries_key(job_id))
                    pipe.expire(job_lost_tries_key(job_id), LOST_TRIES_TTL_SECONDS)
                    lost, _ = await pipe.execute()
    except Exception as exc:  # the quarantine spares workers; it must never stop a job from running
        log_event("WARNING", "poison_check_failed", job_id=job_id, error_type=type(exc).__name__)
        return PickupCheck(0, False)
    return PickupCheck(int(lost), int(lost) >= threshold)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def forget_lost_tries(redis: RedisClient | None, job_id: str) -> None:
    """A try of the job ended (it did not vanish): drop its counter. Never raises."""
    if redis is None:
        return
    try:
        async with asyncio.timeout(POISON_CHECK_TIMEOUT_SECONDS):
            await redis.delete(job_lost_tries_key(job_id))
    except Exception as exc:  # the TTL removes it anyway
        log_event("WARNING", "poison_counter_delete_failed", job_id=job_id, error_type=type(exc).__name__)


async def quarantine(
    ctx: dict[str, Any],
    *,
    queue: str,
    function: str,
    args: tuple[Any, ...],
    raw_kwargs: dict[str, Any],
    job_id: str,
    job_try: int,
    max_tries: int,
    lost_tries: int,
) -> PoisonJob:
    """Capture the job as ``poison`` (its arguments kept, so it can be retried once fixed) and
    return the exception to raise in place of running it."""
    metrics: Metrics | None = ctx.get("metrics")
    detail = (
        f"{lost_tries} earlier tries vanished with their worker (killed or crashed: OOM, segfault, SIGKILL)"
    )
    enqueue_time = ctx.get("enqueue_time")
    result = {
        "f": function,
        "a": list(args),
        "k": raw_kwargs,
        "t": job_try,
        "et": int(enqueue_time.timestamp() * 1000) if isinstance(enqueue_time, datetime) else None,
        "r": {"error_type": "PoisonJob", "error_message": detail},
    }
    record = record_from_silent_failure(
        queue=queue, job_id=job_id, result=result, reason="poison", max_tries=max_tries
    )
    if metrics is not None:
        labels = {"queue": queue, "function": function}
        metrics.inc(metrics.jobs_quarantined_total, labels)
        metrics.inc(metrics.queue_jobs_failed_total, {**labels, "final": "true"})
    log_event(
        "ERROR",
        "job_quarantined",
        queue=queue,
        function=function,
        job_id=job_id,
        job_try=job_try,
        lost_tries=lost_tries,
    )
    # To its end even if arq's own timeout cancels the try meanwhile: arq then finishes the job
    # as failed, so a capture cut short is a job lost (see worker.failure).
    await run_to_end(capture(ctx.get("db"), ctx.get("redis"), record, metrics))
    await forget_lost_tries(ctx.get("redis"), job_id)
    return PoisonJob(f"quarantined as poison: {detail}")

"""The failure decorator every job function (cron included) runs under.

arq retries only ``Retry`` and cancellation; any other exception fails the job at once and no
hook is told that a failure is final. So this wrapper owns the policy:

* its own timeout (``RetryPolicy.timeout_seconds``; arq's timeout is only a backstop above it);
* transient errors — connection errors, timeouts, Postgres serialization failures/deadlocks,
  a prepared-statement error (a statement cache behind a pooler), an unreachable dependency,
  ``Busy`` (e.g. every eligible provider is locked), an explicit ``Retry`` — become ``Retry``
  with exponential backoff and jitter until ``max_tries``;
* a permanent error (anything else, e.g. ``ValueError`` or a domain ``Invalid``/``NotFound``),
  or a transient one on the last try, is final: the job is captured into the DLQ (reason
  ``permanent`` or ``exhausted``) and the original exception is re-raised so arq records it
  as failed;
* cancellation (SIGTERM past ``job_completion_wait``) is not a failure: arq re-queues the job.

At pickup of a later try it first asks ``worker.poison`` whether the job's earlier tries kept
vanishing with their worker; if so the job is quarantined (DLQ reason ``poison``), not run.

It also binds the job's correlation id to every log line the job writes, records the job
metrics, and marks a *cancelled* try in Redis (so the silent path can tell ``max_tries_exceeded``
from ``worker_lost``: a worker killed mid-job writes nothing, so no marker means lost).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.exceptions
from arq.typing import WorkerCoroutine
from arq.worker import Function, Retry, func

from shared.dlq.capture import capture
from shared.infra.cancellation import run_to_end
from shared.infra.correlation import bind_correlation_id, reset_correlation_id
from shared.infra.db import STATEMENT_STATE_ERRORS
from shared.infra.errors import Busy, DependencyUnavailable
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.infra.redis import cancelled_job_key
from shared.infra.tracing import job_span, tracing_enabled
from shared.jobs.policy import RetryPolicy
from shared.jobs.queues import TRACELINK_KWARG, TRACEPARENT_KWARG, split_reserved_kwargs
from shared.jobs.retry_trace import record_retry
from worker.aborts import record_if_aborted
from worker.failure_records import record_from_exception, safe_message
from worker.poison import at_end_of_try, at_pickup

JobFunction = Callable[..., Awaitable[Any]]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    Retry,
    TimeoutError,
    ConnectionError,
    OSError,
    DependencyUnavailable,
    Busy,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.QueryCanceledError,
    # the server is shutting down or restarting under a query (57P01, 57P02): it comes back
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # A pooled connection left mid-operation when Postgres went away answers the next query with
    # "cannot switch to state N; another operation is in progress" (seen in the chaos test at a
    # Postgres restart). A retry runs on another connection; a real driver bug exhausts the tries.
    asyncpg.exceptions.InternalClientError,
    # a prepared statement of the connection, not the job (a statement cache behind PgBouncer)
    *STATEMENT_STATE_ERRORS,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

CANCELLED_KEY_TTL_SECONDS = 86_400
CANCELLED_MARKER_TIMEOUT_SECONDS = 1.0


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc):
        # asyncpg reports a connection the server dropped (Postgres restarted) as InterfaceError:
        # "cannot perform operation: connection is closed", or from ``Transaction.__aexit__``
        # "... the underlying connection is closed" (found by tests/reliability). Any other
        # InterfaceError is a misuse of the driver: permanent.
        return True
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass(frozen=True, slots=True)
class JobTry:
    """One try of one job, as the decorator handles it."""

    ctx: dict[str, Any]
    queue: str
    function: str
    policy: RetryPolicy
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    correlation_id: str | None
    retry_of: Any
    began: float  # time.monotonic() at the try's start; arq's own timeout started a moment before

    @property
    def job_id(self) -> str:
        return str(self.ctx.get("job_id"))

    @property
    def job_try(self) -> int:
        return int(self.ctx.get("job_try", 1))

    @property
    def labels(self) -> dict[str, str]:
        return {"queue": self.queue, "function": self.function}


def with_failure_policy(queue: str, name: str, policy: RetryPolicy, coroutine: JobFunction) -> Function:
    """Wrap ``coroutine(ctx, **kwargs)`` and return the arq ``Function`` to register."""

    @functools.wraps(coroutine)
    async def run_job(ctx: dict[str, Any], *args: Any, **raw_kwargs: Any) -> Any:
        kwargs, correlation_id, retry_of = split_reserved_kwargs(raw_kwargs)
        token = bind_correlation_id(correlation_id or f"job:{ctx.get('job_id')}")
        began = time.monotonic()
        job = JobTry(ctx, queue, name, policy, args, kwargs, correlation_id, retry_of, began)
        metrics: Metrics | None = ctx.get("metrics")
        pickup = await at_pickup(
            ctx, queue=queue, function=name, args=args, raw_kwargs=raw_kwargs, max_tries=policy.max_tries
        )
        if pickup.poisoned is not None:  # not run: arq records the failure and never retries it
            reset_correlation_id(token)
            raise pickup.poisoned
        started = time.perf_counter()
        retried = False  # this try ends in Retry or cancellation: the job goes on
        try:
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every job in a task of its own (3.11)
                async with asyncio.timeout(policy.timeout_seconds):
                    result = await coroutine(ctx, *args, **kwargs)
            except asyncio.CancelledError:
                retried, overrun = await _on_cancel(job)
                if overrun is None:  # an abort or a shutdown: the cancel goes on
                    raise
                failure: Exception = overrun
            except Exception as exc:
                failure = exc
            else:
                _observe(metrics, job.labels, started)
                if metrics is not None:
                    metrics.inc(metrics.queue_jobs_completed_total, job.labels)
                return result
            _observe(metrics, job.labels, started)
            outcome = await _end_failed_try(job, failure)
            retried = isinstance(outcome, Retry)
            if outcome is failure:
                raise failure
            raise outcome from failure
        finally:
            await at_end_of_try(ctx.get("redis"), job.job_id, pickup, job_goes_on=retried)
            reset_correlation_id(token)

    return func(
        _in_job_span(queue, name, run_job),
        name=name,
        max_tries=policy.max_tries,
        timeout=policy.arq_timeout_seconds,
    )


async def _on_cancel(job: JobTry) -> tuple[bool, TimeoutError | None]:
    """A cancelled try: (whether the job goes on, the error to handle it as, if any).

    * an operator's abort: recorded; the cancel goes on (arq records the job as aborted);
    * a shutdown: marked (``_mark_cancelled``); the cancel goes on and arq runs the job again;
    * arq's own timeout: arq cancels a try still running ``ARQ_TIMEOUT_GRACE_SECONDS`` past the
      decorator's timeout (its body did not stop in time when ours cancelled it, or what came
      after the body took that long) and then finishes the job as failed for good, with no
      hook. Passing the cancel on lost the job (in neither the queue nor the DLQ), so it is
      handled as this try's timeout: retried, or captured on the last try.

    A cancel that comes after the try's own timeout is taken for arq's: a shutdown's then makes
    arq run the job again whatever this try ends with (a capture on the last try is the DLQ row
    the next pickup, past max_tries, would have made)."""
    aborted = await record_if_aborted(
        job.ctx,
        queue=job.queue,
        function=job.function,
        args=job.args,
        kwargs=job.kwargs,
        correlation_id=job.correlation_id,
        job_id=job.job_id,
        job_try=job.job_try,
    )
    if aborted:  # an operator's abort is recorded, not a lost or cancelled try
        return False, None
    elapsed = time.monotonic() - job.began
    if elapsed < job.policy.timeout_seconds:  # not past its own timeout: a shutdown
        await _mark_cancelled(job.ctx.get("redis"), job.job_id, job.job_try)
        return True, None
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()  # handled here (an enclosing asyncio.timeout counts only its own cancels)
    return False, TimeoutError(
        f"the try overran its {job.policy.timeout_seconds:g} s timeout "
        f"(still running {elapsed:.1f} s after it began, cancelled)"
    )


async def _end_failed_try(job: JobTry, failure: Exception) -> BaseException:
    """Retry (``Retry`` returned) or capture (the error to end the try with) a failed try.

    The Redis trace and the capture run to their end even if arq cancels the try meanwhile (its
    timeout): arq then finishes the job as failed, so a capture cut short was a job lost (the
    chaos test's ``permanent_not_once``). Both bound their own duration."""
    metrics: Metrics | None = job.ctx.get("metrics")
    transient = is_transient(failure)
    if transient and job.job_try < job.policy.max_tries:
        delay = job.policy.backoff_seconds(job.job_try)
        if metrics is not None:
            metrics.inc(metrics.queue_jobs_failed_total, {**job.labels, "final": "false"})
        log_event(
            "WARNING",
            "job_retry_scheduled",
            queue=job.queue,
            function=job.function,
            job_id=job.job_id,
            job_try=job.job_try,
            max_tries=job.policy.max_tries,
            retry_in_s=round(delay, 3),
            error_type=type(failure).__name__,
        )
        await run_to_end(
            record_retry(
                job.ctx.get("redis"),
                queue=job.queue,
                job_id=job.job_id,
                job_try=job.job_try,
                max_tries=job.policy.max_tries,
                delay_seconds=delay,
                error_type=type(failure).__name__,
                error_message=safe_message(failure),
            )
        )
        return Retry(defer=delay)
    if metrics is not None:
        metrics.inc(metrics.queue_jobs_failed_total, {**job.labels, "final": "true"})
    record = record_from_exception(
        queue=job.queue,
        job_id=job.job_id,
        function=job.function,
        args=job.args,
        kwargs=job.kwargs,
        exc=failure,
        attempts=job.job_try,
        reason="exhausted" if transient else "permanent",
        enqueued_at=job.ctx.get("enqueue_time"),
        correlation_id=job.correlation_id,
        retry_of=job.retry_of,
    )
    await run_to_end(capture(job.ctx.get("db"), job.ctx.get("redis"), record, metrics))
    if isinstance(failure, Retry):
        # arq would retry a Retry forever past max_tries; end it as a plain failure.
        return RuntimeError(f"retries exhausted after {job.job_try} tries")
    return failure


def _in_job_span(queue: str, name: str, run_job: JobFunction) -> WorkerCoroutine:
    """The job's run in its span when tracing is on (``shared.infra.tracing.job_span``)."""

    @functools.wraps(run_job)
    async def run(ctx: dict[str, Any], *args: Any, **raw_kwargs: Any) -> Any:
        if not tracing_enabled():
            return await run_job(ctx, *args, **raw_kwargs)
        with job_span(
            queue=queue,
            function=name,
            job_id=str(ctx.get("job_id")),
            job_try=int(ctx.get("job_try", 1)),
            traceparent=raw_kwargs.get(TRACEPARENT_KWARG),
            link=raw_kwargs.get(TRACELINK_KWARG),
        ):
            return await run_job(ctx, *args, **raw_kwargs)

    return run


def _observe(metrics: Metrics | None, labels: dict[str, str], started: float) -> None:
    if metrics is not None:
        metrics.observe(metrics.queue_job_duration_seconds, time.perf_counter() - started, labels)


async def _mark_cancelled(redis: Any, job_id: str, job_try: int) -> None:
    """Remember that this try ended by cancellation (shutdown past ``job_completion_wait``, an
    abort), so the silent path can tell it from a worker that vanished mid-job: a killed worker
    writes nothing, which is why the normal path needs no Redis round trip at all. The value is the
    try, so ``worker.poison`` can tell *which* try was cancelled."""
    if redis is None:
        return
    try:
        async with asyncio.timeout(CANCELLED_MARKER_TIMEOUT_SECONDS):
            await redis.set(cancelled_job_key(job_id), str(job_try), ex=CANCELLED_KEY_TTL_SECONDS)
    except Exception as exc:  # the marker only sharpens a DLQ reason; never fail the job for it
        log_event("WARNING", "job_cancelled_marker_failed", job_id=job_id, error_type=type(exc).__name__)

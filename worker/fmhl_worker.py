"""``FmhlWorker``: arq's ``Worker`` with the silent-path safety net, heartbeats and probes.

arq fails some jobs through ``Worker.finish_failed_job`` without calling any hook: a job whose
definition expired, one naming an unknown function, one past ``max_tries`` while queued (its
worker was killed mid-job). The override captures each into the DLQ before arq deletes the job,
and never raises (an exception there would kill the worker).

One queue per process (arq has no multi-queue worker). ``job_completion_wait`` is at least the
longest job timeout, so SIGTERM lets running jobs finish. Stopping does not rely on arq's cancel of
the main task reaching it (on Python 3.11 it can be lost): see ``worker/shutdown.py``. Empty polls
back off (``worker/idle_backoff.py``), so a poll delay of 0 does not spin an idle worker.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC
from typing import Any

import redis.exceptions
from arq.cron import CronJob
from arq.worker import Function

from shared.dlq.capture import capture
from shared.dlq.raw_preview import with_raw_preview
from shared.dlq.spool import drain_spool
from shared.infra.config import ConfigError, Settings
from shared.infra.db import Database
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.infra.redis import cancelled_job_key, create_redis, deserialize_job, job_ended_key, serialize_job
from shared.jobs.heartbeat import HEARTBEAT_INTERVAL_SECONDS, Heartbeat, delete_heartbeat, write_heartbeat
from shared.jobs.queues import ALL_QUEUES, SCHEDULER
from worker.aborts import record_abort_from_result
from worker.failure_records import record_from_silent_failure
from worker.idle_backoff import IdleBackoff
from worker.job_claim import ClaimingWorker
from worker.job_finish import FinishBatchingWorker
from worker.live_jobs import LiveJobsWorker
from worker.poison import initialise_metrics as initialise_poison_metrics
from worker.queue_pause import PausableWorker
from worker.redrive import executor_enabled, start_executor, stop_executor
from worker.shutdown import PollingStopped, StopRequest, cancel_until_done

LIVENESS_STALE_SECONDS = 60.0
# Longer than this and the worker starts anyway: jobs then retry with backoff until Postgres is back.
DB_STARTUP_WAIT_SECONDS = 30.0
# A Redis outage (restart, failover, network blip) must not end the process: arq's poll loop lets
# the first connection error escape ``Worker.main`` (the worker died with a traceback, found by
# tests/reliability). The poll backs off between these bounds and resumes by itself.
REDIS_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # redis-py reports a connection lost during arq's WATCH as a WatchError (arq itself catches
    # the ordinary WatchError of a job taken by another worker, so only the outage escapes).
    redis.exceptions.WatchError,
    ConnectionError,
    TimeoutError,
)
REDIS_RETRY_MIN_SECONDS = 0.2
# Shutdown clean-up in Redis is best effort (keys expire anyway): a hung Redis must not stretch
# SIGTERM by two socket timeouts (20 s, past a typical grace period; found by tests/reliability).
SHUTDOWN_REDIS_TIMEOUT_SECONDS = 2.0
# After arq gave up the main task, how long it may take to notice (it notices within one poll).
STOP_GUARD_SECONDS = 30.0
REDIS_RETRY_MAX_SECONDS = 2.0


class FmhlWorker(PausableWorker, LiveJobsWorker, ClaimingWorker, FinishBatchingWorker):
    def __init__(
        self,
        functions: Sequence[Function],
        *,
        queue_name: str,
        settings: Settings,
        metrics: Metrics,
        cron_jobs: Sequence[CronJob] | None = None,
        ctx: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        longest = max(
            [f.timeout_s or 0 for f in functions] + [c.timeout_s or 0 for c in cron_jobs or []] + [1]
        )
        kwargs.setdefault("job_completion_wait", int(longest) + 5)
        kwargs.setdefault("timezone", UTC)
        kwargs.setdefault("allow_abort_jobs", True)  # shared.controls.actions.abort_job
        super().__init__(
            functions,
            queue_name=queue_name,
            cron_jobs=cron_jobs,
            job_serializer=serialize_job,
            job_deserializer=deserialize_job,
            on_startup=self._on_startup,
            on_shutdown=self._on_shutdown,
            ctx=ctx,
            **kwargs,
        )
        self.settings = settings
        self.metrics = metrics
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.last_poll = time.time()
        self._last_beat = 0.0
        self._owns_db = False
        self.owns_redis = True
        self._spool_task: asyncio.Future[None] | None = None
        self._redrive_task: asyncio.Task[None] | None = None
        self._redis_retry_seconds = REDIS_RETRY_MIN_SECONDS
        self.stop_request = StopRequest()
        self.on_stop = self._stop_polling  # arq calls it right after ``main_task.cancel()``
        self._stop_guard: asyncio.Future[bool] | None = None
        self.idle_backoff = IdleBackoff(self.poll_delay_s)

    # -- lifecycle -----------------------------------------------------------------------------
    async def main(self) -> None:
        try:
            await self._wait_for_redis()
            await super().main()
        except PollingStopped:
            return  # stopped by the flag: arq's cancel of this task was lost on the way

    def _stop_polling(self, signum: signal.Signals) -> None:
        """arq's ``on_stop``: running jobs are done (or ``job_completion_wait`` passed) and arq has
        cancelled the main task. Should that cancel be lost, the poll loop stops at its next
        iteration anyway, and the guard repeats the cancel for awaits outside the loop."""
        self.stop_request.set()
        task = self.main_task
        if task is not None and not task.done():
            self._stop_guard = asyncio.ensure_future(
                cancel_until_done(task, timeout=STOP_GUARD_SECONDS, name="worker_main")
            )

    async def _wait_for_redis(self) -> None:
        """arq's ``main`` dials Redis first and dies if it is down: wait (alive, logging) instead."""
        while self._pool is not None:  # None: arq dials its own pool in ``main``
            self.stop_request.check()
            try:
                await self.pool.ping()
                return
            except REDIS_OUTAGE_ERRORS as exc:
                await self._redis_outage(exc)

    async def _poll_iteration(self) -> None:
        """arq's poll, surviving a Redis outage. A job whose own Redis step failed is not lost: it
        stays in the queue under arq's in-progress lock and runs again once the lock expires."""
        self.stop_request.check()
        try:
            await super()._poll_iteration()
        except REDIS_OUTAGE_ERRORS as exc:
            await self._redis_outage(exc)
        else:
            self._redis_retry_seconds = REDIS_RETRY_MIN_SECONDS

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's ``start_jobs`` takes a slot (semaphore + ``job_counter``) before its Redis calls
        and does not give it back when one of them fails: each outage would leak a slot until
        the worker picked no job at all. The job being started holds exactly that one slot.

        Every worker of a queue reads the same head of the queue; walked in the same order, two
        workers race for the same ids and a second process adds almost nothing (``make bench``
        scale-out: 0.98x). Each poll starts at a random point of the head instead (then wraps),
        so workers mostly take different jobs; order within the head was never guaranteed.
        """
        if len(job_ids) > 1:
            start = random.randrange(len(job_ids))
            job_ids = job_ids[start:] + job_ids[:start]
        running_before = len(self.tasks)
        try:
            await super().start_jobs(job_ids)
        except REDIS_OUTAGE_ERRORS:
            self._release_sem_dec_counter_on_complete()
            raise
        await self._back_off_if_idle(started_jobs=len(self.tasks) > running_before)

    async def _back_off_if_idle(self, *, started_jobs: bool) -> None:
        """After a poll that started no job, wait as ``IdleBackoff`` says (never when it started one)."""
        wait = self.idle_backoff.wait_after_poll(started_jobs=started_jobs)
        if wait > 0:
            await asyncio.sleep(wait)

    async def may_start_jobs(self) -> bool:
        """``ClaimingWorker``'s gate, plus the queue's pause (refreshed at most every
        ``PAUSE_REFRESH_SECONDS``; during a Redis outage the last known state holds)."""
        if not await super().may_start_jobs():
            return False
        try:
            return not await self.pause_gate.is_paused(self.pool)
        except REDIS_OUTAGE_ERRORS:
            return not self.pause_gate.paused

    async def _redis_outage(self, exc: BaseException) -> None:
        delay = self._redis_retry_seconds
        log_event(
            "WARNING",
            "worker_redis_unavailable",
            queue=self.queue_name,
            error_type=type(exc).__name__,
            retry_in_s=round(delay, 3),
        )
        self.last_poll = time.time()  # the loop is alive; only a dependency is not
        await asyncio.sleep(delay)
        self._redis_retry_seconds = min(delay * 2, REDIS_RETRY_MAX_SECONDS)

    async def _on_startup(self, ctx: dict[str, Any]) -> None:
        ctx.setdefault("settings", self.settings)
        ctx.setdefault("metrics", self.metrics)
        initialise_poison_metrics(self.metrics, self.queue_name, self.functions)
        if "db" not in ctx:
            db = Database(
                self.settings, application_name=f"fmhl-ops-worker-{self.queue_name}", metrics=self.metrics
            )
            db.start()
            ctx["db"] = db
            self._owns_db = True
        await self._beat(force=True)
        await self._wait_for_database(ctx["db"])
        self._spool_task = asyncio.ensure_future(self._drain_spool_when_connected(ctx))
        if self.queue_name == SCHEDULER and executor_enabled():
            self._redrive_task = start_executor(ctx, self.pool, self.metrics, self.worker_id)
        log_event("INFO", "worker_started", queue=self.queue_name, worker_id=self.worker_id)

    async def _wait_for_database(self, db: Database) -> None:
        """Pick no job before Postgres answers (up to a bound): a job run against a pool that is
        still connecting would fail transiently and burn one of its tries for nothing."""
        try:
            await asyncio.wait_for(db.connected.wait(), timeout=DB_STARTUP_WAIT_SECONDS)
        except TimeoutError:
            log_event("WARNING", "worker_started_without_database", queue=self.queue_name)

    async def _drain_spool_when_connected(self, ctx: dict[str, Any]) -> None:
        db: Database = ctx["db"]
        try:
            await asyncio.wait_for(db.connected.wait(), timeout=60)
            await drain_spool(db.pool, self.pool, self.metrics)
        except Exception as exc:  # the scheduler's drain_dlq_spool cron tries again every minute
            log_event(
                "WARNING", "dlq_spool_drain_failed", error_type=type(exc).__name__, queue=self.queue_name
            )

    async def _on_shutdown(self, ctx: dict[str, Any]) -> None:
        await stop_executor(self._redrive_task)
        try:
            async with asyncio.timeout(SHUTDOWN_REDIS_TIMEOUT_SECONDS):
                await delete_heartbeat(self.pool, self.queue_name, self.worker_id)
        except Exception as exc:
            log_event("WARNING", "heartbeat_delete_failed", error_type=type(exc).__name__)
        if self._owns_db:
            await ctx["db"].close()
        log_event("INFO", "worker_stopped", queue=self.queue_name, worker_id=self.worker_id)

    # -- heartbeat -----------------------------------------------------------------------------
    async def heart_beat(self) -> None:
        self.last_poll = time.time()
        await super().heart_beat()
        await self._beat()

    async def _beat(self, force: bool = False) -> None:
        now = time.time()
        since = now - self._last_beat
        if not force and since < HEARTBEAT_INTERVAL_SECONDS and not self.running_changed(since):
            return
        self._last_beat = now
        beat = Heartbeat(
            self.queue_name, self.worker_id, socket.gethostname(), self.job_counter, now, self.running_jobs()
        )
        try:
            await write_heartbeat(self.pool, beat)
        except Exception as exc:
            log_event("WARNING", "heartbeat_write_failed", error_type=type(exc).__name__)

    async def close(self) -> None:
        """arq's close, but with redis-py 5's ``aclose`` and only for a client we created."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self._spool_task is not None:  # a cancel can be lost here too: repeat it until done
            await cancel_until_done(
                self._spool_task, timeout=SHUTDOWN_REDIS_TIMEOUT_SECONDS, name="dlq_spool_drain"
            )
        if self._stop_guard is not None:
            await self._stop_guard
        try:
            async with asyncio.timeout(SHUTDOWN_REDIS_TIMEOUT_SECONDS):
                await self.pool.delete(self.health_check_key)
        except REDIS_OUTAGE_ERRORS as exc:  # shutting down during a Redis outage: exit cleanly anyway
            log_event("WARNING", "health_check_key_delete_failed", error_type=type(exc).__name__)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        if self.owns_redis:
            await self.pool.aclose()
        self._pool = None

    def is_alive(self) -> bool:
        return time.time() - self.last_poll < LIVENESS_STALE_SECONDS

    # -- silent failure paths ------------------------------------------------------------------
    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        try:
            await self._capture_silent_failure(job_id, result_data)
        except Exception as exc:  # never let capture kill the worker
            log_event("ERROR", "dlq_silent_capture_failed", job_id=job_id, error_type=type(exc).__name__)
        await super().finish_failed_job(job_id, result_data)

    async def _capture_silent_failure(self, job_id: str, result_data: bytes | None) -> None:
        result: dict[str, Any] = deserialize_job(result_data) if result_data else {}
        function_name = str(result.get("f") or "<unknown>")
        error = result.get("r")
        error_type = error.get("error_type") if isinstance(error, dict) else None
        function = self.functions.get(function_name)
        max_tries = function.max_tries if function and function.max_tries is not None else self.max_tries
        if error_type == "CancelledError":  # an operator's abort before the job started
            await record_abort_from_result(self.ctx, self.queue_name, job_id, result)
            return
        if function_name == "<unknown>" and await self._redis_says(self.pool.exists(job_ended_key(job_id))):
            return  # an operator cancelled it as this worker took it (shared.controls.actions)
        if function_name == "<unknown>":
            reason = (
                "permanent" if error_type in ("DeserializationError", "SerializationError") else "expired"
            )
        elif function is None:
            reason = "function_not_found"
        elif int(result.get("t") or 0) > max_tries:
            # its last try started and never finished: cancelled (marker) or its worker vanished
            was_cancelled = await self._redis_says(self.pool.exists(cancelled_job_key(job_id)))
            reason = "max_tries_exceeded" if was_cancelled else "worker_lost"
        else:
            reason = "permanent"
        record = record_from_silent_failure(
            queue=self.queue_name, job_id=job_id, result=result, reason=reason, max_tries=max_tries
        )
        if reason == "permanent" and function_name == "<unknown>":  # no codec could read the body
            record = await with_raw_preview(self.pool, job_id, record)
        if reason in ("worker_lost", "max_tries_exceeded"):
            self.metrics.inc(
                self.metrics.queue_jobs_failed_total,
                {"queue": self.queue_name, "function": function_name, "final": "true"},
            )
        await capture(self.ctx.get("db"), self.pool, record, self.metrics)
        await self._redis_says(self.pool.delete(cancelled_job_key(job_id)))  # else it expires

    async def _redis_says(self, lookup: Awaitable[int]) -> bool:
        """A lookup that only refines the capture's reason: when Redis cannot answer (a blip while
        arq finishes the job), the answer is "no" and the job is still captured (as worker_lost or
        expired, never dropped: arq deletes the job right after this hook)."""
        try:
            return bool(await lookup)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
            log_event("WARNING", "dlq_silent_capture_lookup_failed", error_type=type(exc).__name__)
            return False


def build_worker(
    queue: str,
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    functions: Sequence[Function] | None = None,
    cron_jobs: Sequence[CronJob] | None = None,
    redis: Any = None,
    ctx: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FmhlWorker:
    """The worker for ``queue`` with its registered functions (or the ones given, for tests).

    Must be called inside the running event loop (arq binds the loop at construction).
    """
    from worker.registry import cron_jobs_for, functions_for

    unknown = sorted(set(settings.worker_queues) - set(ALL_QUEUES))
    if unknown:
        raise ConfigError(
            f"WORKER_QUEUES names unknown queue(s) {', '.join(unknown)}; expected {', '.join(ALL_QUEUES)}"
        )
    kwargs.setdefault("max_jobs", settings.max_jobs_for(queue))
    kwargs.setdefault("poll_delay", settings.poll_delay_for(queue))
    worker = FmhlWorker(
        functions if functions is not None else functions_for(queue, settings),
        queue_name=queue,
        settings=settings,
        metrics=metrics or Metrics(),
        cron_jobs=cron_jobs if cron_jobs is not None else cron_jobs_for(queue, settings),
        redis_pool=redis or create_redis(settings.require_redis_url(), timeout_seconds=10),
        ctx=ctx,
        **kwargs,
    )
    worker.owns_redis = redis is None
    return worker

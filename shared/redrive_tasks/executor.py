"""The redrive executor: claims tasks (``lease``) and drives each until it ends or is let go.

One driver per claimed task, at most ``max_tasks`` per executor, made of two loops side by side:
one counts the outcomes in every 0.25 s (renews the lease; may trip or complete the task), the
other, while the task is ``running``, sends what the throttle allows within ``max_in_flight``
unfinished jobs (checked in each batch's transaction), leaving out items of queues paused in
Redis (issue 18: a paused queue pauses its tasks). A paused, tripped or
cancelled task keeps its driver only while jobs are in flight (their outcomes still count).
The executor runs in the worker tier (``worker/redrive.py``: inside ``fmhl-ops worker scheduler``);
nothing here is HTTP. Stopping releases the leases, so a deploy hands tasks over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from shared.infra.cancellation import cancel_until_done
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.jobs.pause_state import read_pauses
from shared.redrive_tasks.control import pending_queues
from shared.redrive_tasks.lease import DEFAULT_LEASE_SECONDS, Lease, claim, release
from shared.redrive_tasks.outcomes import Snapshot, collect
from shared.redrive_tasks.sending import send_batch
from shared.redrive_tasks.throttle import Throttle

CLAIM_POLL_SECONDS = 1.0
OUTCOME_POLL_SECONDS = 0.25
# A batch covers the slots due within this horizon (each send still waits for its own slot). Short
# enough that a batch's own tail (marking, audit, commit, the next batch's reads) stays within the
# throttle's catch-up (CATCH_UP_SECONDS) even on a loaded machine: 0.25 s lost 6-10 % at 1,000/s.
BATCH_HORIZON_SECONDS = 0.1
IDLE_SLEEP_SECONDS = 0.1
MAX_BATCH = 500
QUEUES_REFRESH_SECONDS = 5.0
# A driver still running this long after its first cancel is left to its lease's expiry.
DRIVER_STOP_SECONDS = 10.0


@dataclass(slots=True)
class _Progress:
    """What the outcome loop last saw, for the send loop."""

    changed: asyncio.Event
    snapshot: Snapshot | None = None
    finished: bool = False

    async def next_round(self) -> None:
        """Wait for the outcome loop's next snapshot (at most a second)."""
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout=1.0)


class RedriveExecutor:
    def __init__(
        self,
        pool: Any,
        redis: ArqRedis,
        metrics: Metrics | None,
        *,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        max_tasks: int = 4,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_seconds = lease_seconds
        self.max_tasks = max_tasks
        self.drivers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._queues: dict[uuid.UUID, tuple[float, list[str]]] = {}

    async def run(self) -> None:
        """Claim and drive tasks until cancelled."""
        log_event("INFO", "redrive_executor_started", owner=self.owner)
        try:
            while True:
                try:
                    await self.claim_some()
                except Exception as exc:  # Postgres away: try again next round
                    log_event("WARNING", "redrive_claim_failed", error_type=type(exc).__name__)
                await asyncio.sleep(CLAIM_POLL_SECONDS)
        finally:
            await self.stop()

    async def claim_some(self) -> None:
        for task_id in [t for t, d in self.drivers.items() if d.done()]:
            del self.drivers[task_id]
        while len(self.drivers) < self.max_tasks:
            async with self.pool.acquire() as conn:
                lease = await claim(conn, self.owner, self.lease_seconds, list(self.drivers))
            if lease is None:
                return
            log_event(
                "INFO", "redrive_lease_taken", task_id=str(lease.task_id), owner=self.owner, epoch=lease.epoch
            )
            self.drivers[lease.task_id] = asyncio.create_task(self.drive(lease))

    async def stop(self) -> None:
        """Cancel every driver, repeating a cancel that was lost in a Redis call (issue 17), so a
        scheduler's shutdown never waits on a driver that went on sending."""
        drivers = list(self.drivers.items())
        for task_id, driver in drivers:
            await cancel_until_done(driver, timeout=DRIVER_STOP_SECONDS, name=f"redrive_driver:{task_id}")
        await asyncio.gather(*(driver for _, driver in drivers), return_exceptions=True)
        self.drivers.clear()

    async def drive(self, lease: Lease) -> None:
        try:
            await self._drive(lease)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lease expires; this or another executor resumes the task
            log_event(
                "ERROR",
                "redrive_driver_failed",
                task_id=str(lease.task_id),
                error_type=type(exc).__name__,
                error=str(exc)[:500],
            )
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2), self.pool.acquire() as conn:
                    await release(conn, lease)

    async def _drive(self, lease: Lease) -> None:
        """Two loops per task: outcomes (renews the lease, trips, completes; every 0.25 s) and
        sending, side by side, so counting outcomes never stalls the send schedule."""
        progress = _Progress(asyncio.Event())
        collector = asyncio.create_task(self._collect_loop(lease, progress))
        sender = asyncio.create_task(self._send_loop(lease, progress))
        try:
            await asyncio.gather(collector, sender)
        finally:
            for part in (collector, sender):
                part.cancel()
            await asyncio.gather(collector, sender, return_exceptions=True)

    async def _collect_loop(self, lease: Lease, progress: _Progress) -> None:
        while True:
            snapshot = await collect(self.pool, self.redis, self.metrics, lease)
            if snapshot is None:
                log_event("WARNING", "redrive_lease_lost", task_id=str(lease.task_id), owner=self.owner)
                progress.finished = True
                progress.changed.set()
                return
            progress.snapshot = snapshot
            progress.changed.set()
            task = snapshot.task
            if (
                snapshot.completed
                or task.state == "completed"
                or (task.state != "running" and task.in_flight == 0)
            ):
                progress.finished = True  # nothing left to send or to count: let the lease go
                return
            await asyncio.sleep(OUTCOME_POLL_SECONDS)

    async def _send_loop(self, lease: Lease, progress: _Progress) -> None:
        throttle: Throttle | None = None
        while not progress.finished:
            snapshot = progress.snapshot
            if snapshot is None or snapshot.task.state != "running" or snapshot.tripped:
                await progress.next_round()
                continue
            task = snapshot.task
            if throttle is None or abs(throttle.interval - 1.0 / task.rate_per_second) > 1e-9:
                throttle = Throttle(task.rate_per_second, time.monotonic())
            now = time.monotonic()
            count = min(throttle.due_within(now, BATCH_HORIZON_SECONDS), MAX_BATCH)
            if count <= 0:
                await asyncio.sleep(min(max(throttle.next_at - now, 0.001), IDLE_SLEEP_SECONDS))
                continue
            paused = await self._paused_queues(lease)
            result = await send_batch(
                self.pool,
                self.redis,
                self.metrics,
                lease,
                count=count,
                paused_queues=paused,
                throttle=throttle,
            )
            if not result.running:  # paused, cancelled, tripped or lease lost: the collector tells
                await progress.next_round()
            elif result.sent + result.skipped == 0:  # max_in_flight reached, or all left is paused
                await asyncio.sleep(IDLE_SLEEP_SECONDS)

    async def _paused_queues(self, lease: Lease) -> list[str]:
        cached = self._queues.get(lease.task_id)
        if cached is None or time.monotonic() - cached[0] > QUEUES_REFRESH_SECONDS:
            async with self.pool.acquire() as conn:
                cached = (time.monotonic(), await pending_queues(conn, lease.task_id))
            self._queues[lease.task_id] = cached
        queues = cached[1]
        if not queues:
            return []
        pauses = await read_pauses(self.redis, queues)
        return [queue for queue, state in pauses.items() if state is not None]

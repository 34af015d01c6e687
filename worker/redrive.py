"""Where the redrive executor runs: inside the scheduler process (``fmhl-ops worker scheduler``).

The scheduler is the worker tier's one always-on, queue-agnostic process (cron only, idle between
ticks), so a redrive never competes with the job workers it feeds, and running two or more
schedulers for availability is safe: the lease (``shared.redrive_tasks.lease``) lets exactly one
executor drive a task. Started after the worker's start-up (the pool exists), stopped (leases
released) at its shutdown. ``REDRIVE_EXECUTOR=0`` in the environment turns it off in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from shared.infra.cancellation import cancel_until_done
from shared.infra.metrics import Metrics
from shared.jobs.queues import JOB_QUEUES
from shared.redrive_tasks.executor import RedriveExecutor
from shared.redrive_tasks.model import ITEM_OUTCOMES

# How long a scheduler's shutdown waits for the executor to let its tasks go.
EXECUTOR_STOP_SECONDS = 15.0


def executor_enabled() -> bool:
    return os.environ.get("REDRIVE_EXECUTOR", "1") not in ("0", "false", "no")


async def _run_when_connected(ctx: dict[str, Any], redis: Any, metrics: Metrics, owner: str) -> None:
    db = ctx["db"]
    await db.connected.wait()
    await RedriveExecutor(db.pool, redis, metrics, owner=owner).run()


def export_zero_counters(metrics: Metrics) -> None:
    """The executor's counters exist at 0 from the start (queue x outcome, trips per queue), so a
    first trip is an increase Prometheus can see and every series the rules and dashboard use exists."""
    for queue in JOB_QUEUES:
        for outcome in ITEM_OUTCOMES:
            metrics.inc(metrics.redrive_jobs_total, {"queue": queue, "outcome": outcome}, 0)
        metrics.inc(metrics.redrive_tripped_total, {"queue": queue}, 0)


def start_executor(ctx: dict[str, Any], redis: Any, metrics: Metrics, owner: str) -> asyncio.Task[None]:
    export_zero_counters(metrics)
    return asyncio.create_task(_run_when_connected(ctx, redis, metrics, owner))


async def stop_executor(task: asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    # One cancel: the executor's own loop awaits only Postgres and sleeps, so it is delivered; its
    # ``finally`` then stops the drivers (each with ``cancel_until_done``) and releases the leases.
    # Repeated only should that take longer than it can.
    task.cancel()
    await asyncio.wait([task], timeout=EXECUTOR_STOP_SECONDS)
    if not task.done():
        await cancel_until_done(task, timeout=5, name="redrive_executor")
    if task.done() and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()  # already logged where it failed; read so asyncio does not warn

"""Running a real ``FmhlWorker`` (arq, burst mode) over the test Redis and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from arq.worker import Function

from shared.infra.cancellation import cancel_until_done
from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.metrics import Metrics
from shared.jobs.policy import RetryPolicy
from worker.failure import JobFunction, with_failure_policy
from worker.fmhl_worker import FmhlWorker, build_worker


def job(queue: str, name: str, fn: JobFunction, **policy: Any) -> Function:
    return with_failure_policy(queue, name, RetryPolicy(**policy), fn)


async def run_burst(
    queue: str,
    settings: Settings,
    pool: Any,
    redis: Any,
    functions: Sequence[Function] | None = None,
    *,
    metrics: Metrics | None = None,
    extra_ctx: dict[str, Any] | None = None,
    **kwargs: Any,
) -> FmhlWorker:
    """Run a burst worker until its queue is empty (deferred retries included)."""
    ctx = {"db": Database.from_pool(settings, pool), **(extra_ctx or {})}
    kwargs.setdefault("poll_delay", 0)
    worker = build_worker(
        queue,
        settings,
        metrics=metrics or Metrics(),
        functions=functions,
        redis=redis,
        ctx=ctx,
        burst=True,
        handle_signals=False,
        **kwargs,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


async def stop_worker_task(worker: FmhlWorker, task: asyncio.Future[Any]) -> None:
    """End an in-process worker's ``main()`` the way arq's shutdown does: the stop flag, then a
    cancel repeated until the task is gone. A bare ``task.cancel(); await task`` can hang for
    ever: on Python 3.11 a cancel landing in redis-py's ``wait_for`` is lost (issue 17)."""
    worker.stop_request.set()
    try:
        finished = await cancel_until_done(task, timeout=30, name="test_worker_main")
        assert finished, "the worker's main task ignored its stop for 30 s"
        if not task.cancelled():
            task.result()  # a worker that crashed fails the test with its own error
    finally:
        await worker.close()


@contextlib.asynccontextmanager
async def worker_running(
    queue: str,
    settings: Settings,
    pool: Any,
    redis: Any,
    functions: Sequence[Function],
    *,
    poll_delay: float = 0.05,
) -> AsyncIterator[FmhlWorker]:
    """A (non-burst) worker's ``main()`` running in this process for the block; stopped after it
    by ``stop_worker_task``. The test's Redis stays open (the worker does not own it)."""
    worker = build_worker(
        queue,
        settings,
        functions=functions,
        redis=redis,
        ctx={"db": Database.from_pool(settings, pool)},
        poll_delay=poll_delay,
        handle_signals=False,
    )
    task = asyncio.ensure_future(worker.main())
    try:
        yield worker
    finally:
        await stop_worker_task(worker, task)

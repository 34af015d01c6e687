"""A stop request always stops the worker, wherever arq's cancel of the poll loop lands; an idle
worker with poll delay 0 does not spin.

The stop test runs a real ``FmhlWorker`` (poll delay 0, real Redis and Postgres) and stops it the
way SIGTERM does (arq's own signal handlers), after a random 0-15 ms, 200 times. Before the fix
some stops lost arq's cancel inside redis-py's ``wait_for`` and the loop went on polling (see
``worker/shutdown.py``): the test failed at trial 8, 7 and 0 in three runs. The idle test polled
~2,600 times a second before the back-off (``worker/idle_backoff.py``), ~19 after.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.metrics import Metrics
from shared.jobs.queues import EMAIL_SEND
from worker.fmhl_worker import FmhlWorker, build_worker

TRIALS = 200
STOP_BOUND_SECONDS = 2.0


def _worker(settings: Settings, pool: Any, redis: Any) -> FmhlWorker:
    return build_worker(
        EMAIL_SEND,
        settings,
        metrics=Metrics(),
        redis=redis,
        ctx={"db": Database.from_pool(settings, pool)},
        poll_delay=0,
        handle_signals=False,
    )


async def _stop_forcibly(task: asyncio.Future[None]) -> None:
    """Clean-up after a failed trial: keep cancelling until the task is gone."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)


async def test_a_stop_always_ends_the_poll_loop_wherever_the_cancel_lands(
    settings: Settings, pool: Any, redis: Any
) -> None:
    rng = random.Random(17)
    slowest = 0.0
    for trial in range(TRIALS):
        worker = _worker(settings, pool, redis)
        worker.main_task = task = asyncio.ensure_future(worker.main())
        try:
            await asyncio.sleep(rng.uniform(0, 0.015))
            # arq's SIGTERM handler (wait for running jobs, then cancel) or its plain one (SIGINT
            # without a completion wait): both end in ``main_task.cancel()`` and ``on_stop``.
            if trial % 2:
                worker.handle_sig_wait_for_completion(signal.SIGTERM)
            else:
                worker.handle_sig(signal.SIGINT)
            started = time.monotonic()
            done, _ = await asyncio.wait([task], timeout=STOP_BOUND_SECONDS)
            slowest = max(slowest, time.monotonic() - started)
            assert done, f"trial {trial}: the worker still polled {STOP_BOUND_SECONDS} s after the stop"
        finally:
            await _stop_forcibly(task)
            await worker.close()
    print(f"\n{TRIALS} stops at random points, poll delay 0: all ended; slowest {slowest * 1000:.0f} ms")


async def _zrangebyscore_calls(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_zrangebyscore", {}).get("calls", 0))


async def test_an_idle_worker_with_poll_delay_0_backs_off_instead_of_spinning(
    settings: Settings, pool: Any, redis: Any
) -> None:
    worker = _worker(settings, pool, redis)
    worker.main_task = task = asyncio.ensure_future(worker.main())
    try:
        await asyncio.sleep(0.3)  # started and settled into the idle back-off
        before, t0, cpu0 = await _zrangebyscore_calls(redis), time.monotonic(), time.process_time()
        await asyncio.sleep(1.0)
        polls = await _zrangebyscore_calls(redis) - before
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    finally:
        worker.handle_sig(signal.SIGINT)
        await _stop_forcibly(task)
        await worker.close()
    print(f"\nidle worker, poll delay 0: {polls / elapsed:.0f} polls/s, {cpu / elapsed:.0%} of a core")
    assert polls / elapsed <= 25  # 50 ms idle interval: 20/s (+ Redis round trips); spinning: 1000s

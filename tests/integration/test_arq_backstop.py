"""arq's own timeout (the backstop above the failure decorator's) never loses a job.

arq runs each job under ``asyncio.wait_for(job, function.timeout_s)`` and ends a job that overruns
it as *failed for good* (a ``TimeoutError`` result, no retry, no hook). The failure decorator's
work after the job body (the DLQ capture, the retry trace) and a body that is slow to stop once
cancelled both count against that timeout; cut there, a permanently failing job was finished by
arq without its DLQ row (the chaos test's ``permanent_not_once``: a job in neither place).

Each test shrinks arq's timeout of one function to a second (the decorator's is a fraction of
that) and makes a real step outlast it: a DLQ insert waiting on a table lock, a job whose
clean-up after cancellation takes longer than the backstop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from arq.worker import Function

from shared.infra.config import Settings
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from tests.worker_support import job, run_burst

QUEUE = EMAIL_SEND
ARQ_TIMEOUT_SECONDS = 1.0


def with_arq_timeout(function: Function, seconds: float = ARQ_TIMEOUT_SECONDS) -> Function:
    return dataclasses.replace(function, timeout_s=seconds)


async def _dlq(pool: Any) -> list[tuple[str, str, str, int]]:
    rows = await pool.fetch("SELECT job_id, reason, error_type, attempts FROM dead_letter_queue")
    return [(r["job_id"], r["reason"], r["error_type"], r["attempts"]) for r in rows]


async def _hold_dlq_lock(pool: Any, locked: asyncio.Event, seconds: float) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE dead_letter_queue IN ACCESS EXCLUSIVE MODE")
        locked.set()
        await asyncio.sleep(seconds)


async def test_a_capture_that_outlasts_arqs_timeout_still_stores_the_row(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """The job fails permanently at once; its DLQ insert waits 2.5 s on a lock, past arq's 1 s."""

    async def missing(ctx: dict[str, Any]) -> None:
        raise LookupError("no such export")

    locked = asyncio.Event()
    holder = asyncio.create_task(_hold_dlq_lock(clean_db, locked, 2.5))
    await locked.wait()
    job_id = await enqueue(redis, "missing", queue=QUEUE)
    functions = [with_arq_timeout(job(QUEUE, "missing", missing, max_tries=3, timeout_seconds=0.5))]
    await run_burst(QUEUE, settings, clean_db, redis, functions)
    await holder
    assert await _dlq(clean_db) == [(job_id, "permanent", "LookupError", 1)]
    assert await redis.zcard(QUEUE) == 0


async def test_a_try_that_overruns_arqs_timeout_is_retried_not_dropped(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """The first try ignores its own timeout for longer than arq's (a driver's slow clean-up after
    a cancel); the job is tried again, as after its own timeout, and the second try succeeds."""
    tries: list[int] = []

    async def stubborn(ctx: dict[str, Any]) -> str:
        tries.append(int(ctx["job_try"]))
        if len(tries) == 1:
            try:
                await asyncio.sleep(30)
            finally:  # a clean-up that takes long after the decorator's own timeout cancelled it
                await asyncio.sleep(3)
        return "done"

    job_id = await enqueue(redis, "stubborn", queue=QUEUE)
    policy = {"max_tries": 3, "timeout_seconds": 0.3, "backoff_base_seconds": 0.05}
    functions = [with_arq_timeout(job(QUEUE, "stubborn", stubborn, **policy))]
    await run_burst(QUEUE, settings, clean_db, redis, functions)
    assert tries == [1, 2]
    assert await _dlq(clean_db) == []
    assert job_id is not None and await redis.zcard(QUEUE) == 0


async def test_a_last_try_that_overruns_arqs_timeout_is_captured_as_exhausted(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    async def stubborn(ctx: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(3)

    job_id = await enqueue(redis, "stubborn", queue=QUEUE)
    functions = [with_arq_timeout(job(QUEUE, "stubborn", stubborn, max_tries=1, timeout_seconds=0.3))]
    await run_burst(QUEUE, settings, clean_db, redis, functions)
    assert await _dlq(clean_db) == [(job_id, "exhausted", "TimeoutError", 1)]
    assert await redis.zcard(QUEUE) == 0

"""Redrive tasks (issue 19): creation over a 100,000-entry failure group, and the executor's rate.

1. ``create_task`` over one failure group of ``GROUP`` unresolved entries, on top of the seeded
   DLQ (1M rows at scale 1m): the frozen selection is one ``INSERT … SELECT``. Target < 1 s, the
   median of ``scale.rounds`` rounds (each round's task is cancelled so the next can take the
   entries again). For scale, the note gives a bare ``SELECT count(*)`` of the same group.
2. The executor (``RedriveExecutor``, in process, real Postgres and Redis) driving a task at
   1,000 jobs/s with no worker consuming (``max_in_flight`` above the task's size): the rate
   achieved is measured from the enqueue times arq stores (the zset scores of ``dlq-retry:*``),
   (n - 1) / (last - first); target within 10 % of 1,000 (ratio ≥ 0.9), and the most sent in any
   1 s window ≤ 1.1 x 1,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from typing import Any

import asyncpg

from bench.common import Backends, Result, Scale, progress
from shared.dlq.redrive import Actor
from shared.infra.config import load_settings
from shared.infra.db import create_pool
from shared.infra.metrics import Metrics
from shared.infra.redis import create_redis
from shared.jobs.enqueue_once import enqueue_unique
from shared.jobs.queues import EMAIL_SEND
from shared.redrive_tasks.control import change_state, get_task
from shared.redrive_tasks.executor import RedriveExecutor
from shared.redrive_tasks.selection import SelectionFilter, TaskSpec, create_task

RATE = 1000.0
FINGERPRINT = "fp-bench-redrive"
GROUPS = {"toy": 2_000, "1m": 100_000, "10m": 100_000}
SENDS = {"toy": 1_000, "1m": 10_000, "10m": 10_000}

SEED_GROUP = """
INSERT INTO dead_letter_queue (queue_name, job_id, function, args, kwargs, error_type, error_message,
                               fingerprint, attempts, reason, failed_at)
SELECT 'email_send', $2 || g, 'send_email', '[]'::jsonb,
       jsonb_build_object('to', 'p' || g || '@example.test', 'template', 'low_balance',
                          'context', jsonb_build_object('provider_name', 'Acme'), 'idempotency_key', $2 || g),
       'SMTPDataError', '451 4.3.0 Try again later', $3, 5, 'exhausted',
       now() - interval '2 hours' + g * interval '1 millisecond'
FROM generate_series(1, $1::int) AS g
"""


def _max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def redrive_case(backends: Backends, scale: Scale) -> list[Result]:
    group, sends = GROUPS.get(scale.name, 100_000), SENDS.get(scale.name, 10_000)
    settings = load_settings({"DATABASE_URL": backends.database_url, "REDIS_URL": backends.redis_url})
    pool = await create_pool(settings, application_name="fmhl-bench-redrive")
    redis = create_redis(backends.redis_url, timeout_seconds=30)
    results: list[Result] = []
    try:
        progress(f"redrive: seeding a {group:,}-entry failure group")
        await pool.execute(SEED_GROUP, group, "bench-redrive-", FINGERPRINT)
        await pool.execute("ANALYZE dead_letter_queue")
        spec = TaskSpec(name="bench", filter=SelectionFilter(queue=EMAIL_SEND, fingerprint=FINGERPRINT),
                        rate_per_second=RATE, max_in_flight=10_000)  # fmt: skip
        actor = Actor("bench")
        timings, counts = [], []
        for _ in range(max(scale.rounds, 3)):
            started = time.perf_counter()
            await pool.fetchval("SELECT count(*) FROM dead_letter_queue WHERE fingerprint = $1", FINGERPRINT)
            counts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            task = await create_task(pool, spec, actor)
            timings.append((time.perf_counter() - started) * 1000)
            assert task.total == group, task.total
            await change_state(pool, task.id, "cancel", actor)
        results.append(
            Result("redrive", f"create a task over a {group:,}-entry group", statistics.median(timings), "ms",
                   target="< 1000", note=f"median of {len(timings)}; bare count(*) of the group "
                   f"{statistics.median(counts):.0f} ms")
        )  # fmt: skip

        progress(f"redrive: executor at {RATE:g} jobs/s over {sends:,} entries")
        await pool.execute("DELETE FROM redrive_tasks")
        await redis.delete(EMAIL_SEND)
        task = await create_task(pool, _limited(spec, sends), actor)
        executor = RedriveExecutor(pool, redis, Metrics(), owner="bench")
        runner = asyncio.create_task(executor.run())
        try:
            deadline = time.monotonic() + sends / RATE * 3 + 30
            while time.monotonic() < deadline:
                async with pool.acquire() as conn:
                    current = await get_task(conn, task.id)
                if current.sent + current.skipped >= current.total:
                    break
                await asyncio.sleep(0.5)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        raw = await _raw_enqueue_rate(redis, min(sends, 3000))
        scores = sorted(
            s
            for m, s in await redis.zrange(EMAIL_SEND, 0, -1, withscores=True)
            if m.startswith(b"dlq-retry:")
        )
        times = [s / 1000 for s in scores]
        achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
        results.append(
            Result("redrive", f"executor rate, task at {RATE:g}/s", achieved, "jobs/s", baseline=RATE,
                   ratio=achieved / RATE, target=">= 0.9",
                   note=f"{len(times):,} sent over {times[-1] - times[0]:.1f} s (enqueue times); "
                   f"raw enqueue capacity in the same run (a loop, no DB, no pacing): {raw:.0f}/s")
        )  # fmt: skip
        peak = _max_in_window(times, 1.0)
        results.append(
            Result("redrive", "most sent in any 1 s window", peak, "jobs", baseline=RATE, ratio=peak / RATE,
                   target="<= 1.1")
        )  # fmt: skip
    finally:
        await redis.delete(EMAIL_SEND)
        await redis.aclose()
        with contextlib.suppress(asyncpg.PostgresError):
            await pool.execute("DELETE FROM redrive_tasks")
        await pool.close()
    return results


def _limited(spec: TaskSpec, limit: int) -> TaskSpec:
    return TaskSpec(name=spec.name, filter=spec.filter, rate_per_second=spec.rate_per_second,
                    max_in_flight=spec.max_in_flight, limit=limit)  # fmt: skip


async def _raw_enqueue_rate(redis: Any, n: int = 3000) -> float:
    """How fast this machine enqueues at all right now: the ceiling any executor works under."""
    started = time.perf_counter()
    for i in range(n):
        await enqueue_unique(
            redis, "send_email", args=(), kwargs={"n": i}, job_id=f"bench-raw-{i}", queue="bench-raw"
        )
    rate = n / (time.perf_counter() - started)
    await redis.delete("bench-raw", *[f"arq:job:bench-raw-{i}" for i in range(n)])
    return rate

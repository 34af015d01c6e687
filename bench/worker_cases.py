"""Worker overhead: no-op jobs through our worker against bare arq, in one process.

Both sides run in this process, in burst mode, over the same Redis, with the same ``max_jobs`` and
``poll_delay`` (the product defaults) and the same orjson job serializer (the wire format is a
product requirement, not overhead): side A is ``FmhlWorker`` from ``build_worker`` with the job
wrapped by ``with_failure_policy`` and a real ``Database``; side B is ``arq.worker.Worker`` with the
bare function. The time is ``Worker.main()`` alone (start-up included, closing excluded), jobs
pre-enqueued by one pipeline that writes arq's job keys and zset.

Logging is configured as in production (JSON at INFO) with stdout sent to /dev/null while a side
runs: every log line is still formatted, and the table stays readable.

The failure storm and scale-out run real processes: ``bench.storm_case``, ``bench.scale_out_case``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from arq.jobs import serialize_job as arq_serialize_job
from arq.worker import Worker, func

from bench.common import Backends, Result, Scale, alternate, progress, quiet_stdout
from shared.infra.config import (
    DEFAULT_WORKER_MAX_JOBS,
    DEFAULT_WORKER_POLL_DELAY_SECONDS,
    Settings,
)
from shared.infra.db import Database
from shared.infra.logs import configure_logging
from shared.infra.metrics import Metrics
from shared.infra.redis import create_redis, deserialize_job, serialize_job
from shared.jobs.policy import RetryPolicy
from worker.failure import with_failure_policy
from worker.fmhl_worker import build_worker

QUEUE = "report_export"
MAX_JOBS = DEFAULT_WORKER_MAX_JOBS
POLL_DELAY = DEFAULT_WORKER_POLL_DELAY_SECONDS
JOB_TTL_MS = 86_400_000
SCALE_OUT_MAX_JOBS = DEFAULT_WORKER_MAX_JOBS


async def noop(ctx: dict[str, Any], n: int) -> int:
    return n


async def enqueue_raw(redis: Any, queue: str, function: str, job_ids: list[str]) -> None:
    """arq's job key (orjson) and zset entry for every id, in one non-transactional pipeline."""
    now_ms = int(time.time() * 1000)
    pipe = redis.pipeline(transaction=False)
    for n, job_id in enumerate(job_ids):
        payload = arq_serialize_job(function, (n,), {}, None, now_ms, serializer=serialize_job)
        pipe.psetex(f"arq:job:{job_id}", JOB_TTL_MS, payload)
        pipe.zadd(queue, {job_id: now_ms})
    await pipe.execute()


class WorkerBench:
    """The two sides of the in-process ratio cases, sharing one Redis client and one pool."""

    def __init__(self, backends: Backends, redis: Any, db: Database, settings: Settings) -> None:
        self.backends = backends
        self.redis = redis
        self.db = db
        self.settings = settings

    async def _run(self, worker: Any, jobs: int) -> float:
        started = time.perf_counter()
        with quiet_stdout():
            await worker.main()
        elapsed = time.perf_counter() - started
        done = worker.jobs_complete + worker.jobs_failed
        if done != jobs:
            raise RuntimeError(f"{type(worker).__name__} finished {done} of {jobs} jobs")
        return jobs / elapsed

    async def bare(self, function: Any, jobs: int) -> float:
        ids = [f"bench-bare-{uuid.uuid4().hex}" for _ in range(jobs)]
        await enqueue_raw(self.redis, QUEUE, "bench_job", ids)
        worker = Worker(
            functions=[func(function, name="bench_job")],
            queue_name=QUEUE,
            redis_pool=self.redis,
            burst=True,
            max_jobs=MAX_JOBS,
            poll_delay=POLL_DELAY,
            handle_signals=False,
            job_serializer=serialize_job,
            job_deserializer=deserialize_job,
        )
        rate = await self._run(worker, jobs)
        await self.redis.delete(worker.health_check_key)
        return rate

    async def ours(self, function: Any, jobs: int, *, prefix: str = "bench-ours-") -> float:
        ids = [f"{prefix}{uuid.uuid4().hex}" for _ in range(jobs)]
        await enqueue_raw(self.redis, QUEUE, "bench_job", ids)
        metrics = Metrics()
        worker = build_worker(
            QUEUE,
            self.settings,
            metrics=metrics,
            functions=[with_failure_policy(QUEUE, "bench_job", RetryPolicy(), function)],
            redis=self.redis,
            ctx={"db": self.db},
            burst=True,
            max_jobs=MAX_JOBS,
            poll_delay=POLL_DELAY,
            handle_signals=False,
        )
        try:
            rate = await self._run(worker, jobs)
        finally:
            with quiet_stdout():
                await worker.close()
        return rate


@contextlib.asynccontextmanager
async def worker_bench(backends: Backends) -> AsyncIterator[WorkerBench]:
    settings = Settings(database_url=backends.database_url, redis_url=backends.redis_url)
    redis = create_redis(backends.redis_url)
    db = Database(settings, application_name="fmhl-bench-worker", metrics=Metrics())
    db.start()
    try:
        await asyncio.wait_for(db.connected.wait(), timeout=30)
        yield WorkerBench(backends, redis, db, settings)
    finally:
        await db.close()
        await redis.aclose()


async def overhead_case(backends: Backends, scale: Scale) -> list[Result]:
    jobs = scale.overhead_jobs
    progress(f"worker overhead: {jobs:,} no-op jobs, max_jobs={MAX_JOBS}, poll_delay={POLL_DELAY}")
    configure_logging("INFO", "json")
    async with worker_bench(backends) as bench:
        await bench.bare(noop, max(50, jobs // 5))  # warm-up, both sides
        await bench.ours(noop, max(50, jobs // 5))
        rounds = await alternate(
            lambda: bench.ours(noop, jobs), lambda: bench.bare(noop, jobs), scale.rounds, label="overhead"
        )
    return [
        Result(
            "worker overhead",
            f"{jobs:,} no-op jobs, max_jobs={MAX_JOBS}",
            rounds.ours_median,
            "jobs/s",
            baseline=rounds.baseline_median,
            ratio=rounds.ratio,
            target=">= 0.9",
            note=rounds.describe(),
        )
    ]

"""Worker cases: per-job overhead and a failure storm against bare arq, and scale-out.

Overhead and storm run both sides in this process, in burst mode, over the same Redis, with the
same ``max_jobs`` and ``poll_delay`` (the product defaults) and the same orjson job serializer
(the wire format is a product requirement, not overhead): side A is ``FmhlWorker`` from
``build_worker`` with the job wrapped by ``with_failure_policy`` and a real ``Database``; side B
is ``arq.worker.Worker`` with the bare function. The time is ``Worker.main()`` alone (start-up
included, closing excluded), jobs pre-enqueued by one pipeline that writes arq's job keys and zset.

Logging is configured as in production (JSON at INFO) with stdout sent to /dev/null while a side
runs: every log line is still formatted, and the table stays readable.

Scale-out starts real worker processes (``python -m bench.worker_proc``, which runs
``worker.process.run_worker`` exactly as ``fmhl-ops worker`` does, with a bench job of 10 ms of
I/O registered): 1 process vs 2, on a queue filled while they idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from arq.jobs import serialize_job as arq_serialize_job
from arq.worker import Worker, func

from bench.common import Backends, Result, Scale, alternate, progress, quiet_stdout
from bench.worker_proc import IO_JOB_SECONDS
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


async def fail(ctx: dict[str, Any], n: int) -> None:
    raise ValueError(f"bench storm item {n} is invalid")


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


async def storm_case(backends: Backends, scale: Scale) -> list[Result]:
    jobs = scale.storm_jobs
    progress(f"failure storm: {jobs:,} permanent failures, every one captured")
    configure_logging("INFO", "json")
    problems: list[str] = []
    async with worker_bench(backends) as bench:

        async def ours() -> float:
            prefix = f"bench-storm-{uuid.uuid4().hex[:8]}-"
            rate = await bench.ours(fail, jobs, prefix=prefix)
            problems.extend(await _check_one_row_per_job(bench.db, prefix, jobs))
            return rate

        await bench.bare(fail, max(50, jobs // 5))
        await bench.ours(fail, max(50, jobs // 5), prefix="bench-storm-warmup-")
        rounds = await alternate(ours, lambda: bench.bare(fail, jobs), scale.rounds, label="storm")
    exact = scale.rounds - len(problems)
    return [
        Result(
            "failure storm",
            f"{jobs:,} permanent failures, all captured",
            rounds.ours_median,
            "captures/s",
            baseline=rounds.baseline_median,
            ratio=rounds.ratio,
            target=">= 0.75",
            note=rounds.describe(),
        ),
        Result(
            "failure storm",
            "rounds with exactly one DLQ row per job",
            exact,
            f"of {scale.rounds}",
            target=f">= {scale.rounds}",
            note="; ".join(problems) or "count and count(DISTINCT job_id) both equal the jobs run",
        ),
    ]


async def _check_one_row_per_job(db: Database, prefix: str, jobs: int) -> list[str]:
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT count(*) AS total, count(DISTINCT job_id) AS distinct_jobs
               FROM dead_letter_queue WHERE queue_name = $1 AND job_id LIKE $2 || '%'""",
            QUEUE,
            prefix,
        )
    if row["total"] != jobs or row["distinct_jobs"] != jobs:
        return [f"{prefix}: {row['total']} rows for {row['distinct_jobs']} distinct of {jobs} jobs"]
    return []


# -- scale-out ------------------------------------------------------------------------------------
def _worker_env(backends: Backends) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        DATABASE_URL=backends.database_url,
        REDIS_URL=backends.redis_url,
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        WORKER_MAX_JOBS=str(SCALE_OUT_MAX_JOBS),
        WORKER_POLL_DELAY_SECONDS=str(POLL_DELAY),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    return env


async def _wait_empty(redis: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await redis.zcard(QUEUE) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue {QUEUE} not drained within {timeout}s")
        await asyncio.sleep(0.005)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


cpu_per_1k_jobs: dict[int, list[float]] = {1: [], 2: []}


async def _scale_out_round(backends: Backends, redis: Any, processes: int, jobs: int) -> float:
    env = _worker_env(backends)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.worker_proc", QUEUE],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(processes)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(await redis.keys(f"fmhl:heartbeat:{QUEUE}:*")) < processes:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("bench workers did not start")
            await asyncio.sleep(0.05)
        warm = [f"bench-scale-warm-{uuid.uuid4().hex}" for _ in range(20 * processes)]
        await enqueue_raw(redis, QUEUE, "bench_io", warm)
        await _wait_empty(redis, 60)
        ids = [f"bench-scale-{uuid.uuid4().hex}" for _ in range(jobs)]
        cpu_before = sum(_cpu_seconds(p.pid) for p in procs)
        started = time.perf_counter()
        await enqueue_raw(redis, QUEUE, "bench_io", ids)
        await _wait_empty(redis, 300)
        rate = jobs / (time.perf_counter() - started)
        cpu_per_1k_jobs[processes].append(
            1000 * (sum(_cpu_seconds(p.pid) for p in procs) - cpu_before) / jobs
        )
        return rate
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def scale_out_case(backends: Backends, scale: Scale) -> list[Result]:
    for samples in cpu_per_1k_jobs.values():
        samples.clear()
    jobs = scale.scale_out_jobs
    progress(
        f"scale-out: {jobs:,} jobs of {IO_JOB_SECONDS * 1000:.0f} ms I/O, 2 worker processes vs 1 "
        f"(WORKER_MAX_JOBS={SCALE_OUT_MAX_JOBS} each)"
    )
    redis = create_redis(backends.redis_url)
    try:
        rounds = await alternate(
            lambda: _scale_out_round(backends, redis, 2, jobs),
            lambda: _scale_out_round(backends, redis, 1, jobs),
            scale.rounds,
            label="scale-out",
        )
    finally:
        await redis.aclose()
    return [
        Result(
            "scale-out",
            f"2 worker processes vs 1, {IO_JOB_SECONDS * 1000:.0f} ms I/O jobs",
            rounds.ours_median,
            "jobs/s",
            baseline=rounds.baseline_median,
            ratio=rounds.ratio,
            target=">= 1.8",
            note=rounds.describe()
            + "; worker CPU per 1k jobs: "
            + ", ".join(
                f"{n} process{'es' if n > 1 else ''} {statistics.median(v):.2f} s"
                for n, v in cpu_per_1k_jobs.items()
                if v
            ),
        )
    ]

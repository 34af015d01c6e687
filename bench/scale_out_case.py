"""Scale-out: 2 worker processes vs 1, read against bare arq's own 2-vs-1 in the same run.

Two processes on the same cores cannot double the throughput of one that already keeps a core
busy, so an absolute 2x says more about the machine than about the code. The figure that judges
the code is ours' 2-vs-1 ratio over bare arq's 2-vs-1 ratio, both measured in the same rounds
(target >= 0.9). Ours: ``python -m bench.worker_proc`` (``worker.process.run_worker``, the code
behind ``fmhl-ops worker``, with a 10 ms I/O job registered); bare: ``python -m bench.arq_baseline
io`` (plain arq, same job, same ``max_jobs``, poll delay and serializer). Processes start idle,
then the jobs are queued; the time runs from the first ``ZADD`` until the queue is empty.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

from bench.arq_baseline import READY_KEY_PREFIX
from bench.common import Backends, Result, Scale, progress
from bench.storm_case import enqueue_raw, start, stop, wait_drained, worker_env
from bench.worker_proc import IO_JOB_SECONDS
from shared.infra.config import DEFAULT_WORKER_MAX_JOBS, DEFAULT_WORKER_POLL_DELAY_SECONDS
from shared.infra.redis import create_redis

QUEUE = "report_export"
MAX_JOBS = DEFAULT_WORKER_MAX_JOBS
POLL_DELAY = DEFAULT_WORKER_POLL_DELAY_SECONDS
SIDES = (("ours", 2), ("ours", 1), ("bare", 2), ("bare", 1))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    import os

    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ready(redis: Any, side: str, pids: list[int]) -> bool:
    if side == "ours":
        return len(await redis.keys(f"fmhl:heartbeat:{QUEUE}:*")) >= len(pids)
    return all(await asyncio.gather(*(redis.exists(f"{READY_KEY_PREFIX}{pid}") for pid in pids)))


async def scale_out_round(
    backends: Backends, redis: Any, side: str, processes: int, jobs: int
) -> tuple[float, float]:
    """(jobs/s, worker CPU seconds per 1,000 jobs)."""
    cmd = (
        [sys.executable, "-m", "bench.worker_proc", QUEUE]
        if side == "ours"
        else [sys.executable, "-m", "bench.arq_baseline", "io", QUEUE]
    )
    env = worker_env(backends, max_jobs=MAX_JOBS, poll_delay=POLL_DELAY)
    procs = [start(cmd, env) for _ in range(processes)]
    try:
        deadline = time.monotonic() + 60
        while not await _ready(redis, side, [p.pid for p in procs]):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{side} bench workers did not start")
            await asyncio.sleep(0.05)
        warm = [f"bench-scale-warm-{uuid.uuid4().hex}" for _ in range(20 * processes)]
        await enqueue_raw(redis, QUEUE, "bench_io", warm, list(range(len(warm))))
        await wait_drained(redis, QUEUE, procs, 60)
        ids = [f"bench-scale-{uuid.uuid4().hex}" for _ in range(jobs)]
        cpu_before = sum(_cpu_seconds(p.pid) for p in procs)
        started = time.perf_counter()
        await enqueue_raw(redis, QUEUE, "bench_io", ids, list(range(jobs)))
        await wait_drained(redis, QUEUE, procs, 300)
        rate = jobs / (time.perf_counter() - started)
        cpu = 1000 * (sum(_cpu_seconds(p.pid) for p in procs) - cpu_before) / jobs
        return rate, cpu
    finally:
        stop(procs)
        await redis.delete(*[f"{READY_KEY_PREFIX}{p.pid}" for p in procs])


async def scale_out_case(backends: Backends, scale: Scale) -> list[Result]:
    jobs = scale.scale_out_jobs
    progress(
        f"scale-out: {jobs:,} jobs of {IO_JOB_SECONDS * 1000:.0f} ms I/O, 2 worker processes vs 1, "
        f"ours and bare arq (WORKER_MAX_JOBS={MAX_JOBS} each)"
    )
    rates: dict[tuple[str, int], list[float]] = {key: [] for key in SIDES}
    cpu: dict[tuple[str, int], list[float]] = {key: [] for key in SIDES}
    redis = create_redis(backends.redis_url)
    try:
        for index in range(scale.rounds):
            order = SIDES if index % 2 == 0 else tuple(reversed(SIDES))
            for side, processes in order:
                rate, cpu_per_1k = await scale_out_round(backends, redis, side, processes, jobs)
                rates[(side, processes)].append(rate)
                cpu[(side, processes)].append(cpu_per_1k)
            progress(
                "scale-out: round "
                + f"{index + 1}/{scale.rounds}: "
                + ", ".join(f"{s} x{n} {rates[(s, n)][-1]:,.0f}/s" for s, n in SIDES)
            )
    finally:
        await redis.aclose()
    ours = [two / one for two, one in zip(rates[("ours", 2)], rates[("ours", 1)], strict=True)]
    bare = [two / one for two, one in zip(rates[("bare", 2)], rates[("bare", 1)], strict=True)]
    relative = statistics.median(o / b for o, b in zip(ours, bare, strict=True))
    detail = "; ".join(
        f"{s} x{n} [{', '.join(f'{v:,.0f}' for v in rates[(s, n)])}]/s, "
        f"CPU {statistics.median(cpu[(s, n)]):.2f} s per 1k jobs"
        for s, n in SIDES
    )
    return [
        Result(
            "scale-out",
            f"2 processes vs 1, {IO_JOB_SECONDS * 1000:.0f} ms I/O jobs: ours vs bare arq's own",
            statistics.median(ours),
            "x",
            baseline=statistics.median(bare),
            ratio=relative,
            target=">= 0.9",
            note=f"per-round 2-vs-1 ours [{', '.join(f'{v:.2f}' for v in ours)}], "
            f"bare arq [{', '.join(f'{v:.2f}' for v in bare)}]; {detail}",
        )
    ]

"""Failure storm, measured from outside on the processes as they ship (issue 17 §2).

Three sides, each a separate OS process, started and idle before its jobs are queued, all with
``WORKER_MAX_JOBS=50``, ``WORKER_POLL_DELAY_SECONDS=0`` and the orjson job serializer:

* **ours**: ``fmhl-ops worker distribute_lead``, the shipped command (group commit, fingerprint,
  escaping, metrics, one ``dlq_captured`` log line per job, JSON logs to /dev/null);
* **insert**: bare arq whose job stores its failure with one asyncpg ``INSERT`` (traceback
  included, pool of 10) before raising (``bench.arq_baseline insert``);
* **bare**: bare arq whose job raises, nothing stored (``bench.arq_baseline bare``).

Jobs: ``storm_jobs`` (3,000) ``distribute_lead`` jobs whose ``lead_id`` is not a UUID, so each
fails at once. Each side is timed by its own clocks, never by the bench's: ours and insert by
their rows (first ``failed_at`` to last ``captured_at``), bare by arq's result records (first job
start ``st`` to last finish ``ft``). Process start-up is outside every window. Rounds alternate
the order of the sides (ours/insert/bare, bare/insert/ours, ...), after a warm-up round of each
side (not at ``toy``: three more process starts that ``make test``, which asserts no figure, does
not need).

Redis commands per job: ``INFO commandstats`` deltas from just before the jobs are queued until
the queue is empty, minus the bench's own ``PSETEX``/``ZADD`` (queueing) and ``ZCARD`` polls
(``INFO`` itself is not counted). CPU per job, which a machine shared with other work disturbs
far less than throughput: the worker process's, its Postgres backends' (found by
``application_name``) and the Redis server's, each over the same window, when they run on this
machine (``/proc``); reported beside the rates.

Exactly once: every round, ours and insert must hold exactly one row per job (``count`` and
``count(DISTINCT job_id)``), bare exactly one arq result per job.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from arq.constants import result_key_prefix
from arq.jobs import serialize_job as arq_serialize_job

from bench.arq_baseline import CREATE_BENCH_FAILURES, INSERT_APPLICATION_NAME, READY_KEY_PREFIX
from bench.common import Backends, Result, Scale, progress
from shared.infra.redis import create_redis, deserialize_job, serialize_job

QUEUE = "distribute_lead"
MAX_JOBS = 50
POLL_DELAY = 0.0
JOB_TTL_MS = 86_400_000
SIDES = ("ours", "insert", "bare")
ORDERS = (("ours", "insert", "bare"), ("bare", "insert", "ours"), ("insert", "ours", "bare"))
DRAIN_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 15.0
START_TIMEOUT_SECONDS = 60.0
OURS_APPLICATION_NAME = f"fmhl-ops-worker-{QUEUE}"


def worker_env(
    backends: Backends, *, max_jobs: int = MAX_JOBS, poll_delay: float = POLL_DELAY
) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "WORKER_METRICS_PORT")
    }
    env.update(
        DATABASE_URL=backends.database_url,
        REDIS_URL=backends.redis_url,
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        WORKER_MAX_JOBS=str(max_jobs),
        WORKER_POLL_DELAY_SECONDS=str(poll_delay),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    return env


def fmhl_ops() -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "fmhl-ops"
    return str(beside) if beside.exists() else (shutil.which("fmhl-ops") or "fmhl-ops")


def command(side: str, queue: str = QUEUE) -> list[str]:
    if side == "ours":
        return [fmhl_ops(), "worker", queue]
    return [sys.executable, "-m", "bench.arq_baseline", side, queue]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> int:
    """SIGTERM each, wait; SIGKILL one still running after ``STOP_TIMEOUT_SECONDS``. Returns how
    many had to be killed (a worker that ignored SIGTERM: issue 17 §1)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    killed = 0
    for proc in procs:
        try:
            proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            killed += 1
    return killed


async def enqueue_raw(redis: Any, queue: str, function: str, job_ids: list[str], args: list[Any]) -> None:
    """arq's job key (orjson) and zset entry for every id, pipelined in chunks."""
    now_ms = int(time.time() * 1000)
    for offset in range(0, len(job_ids), 5_000):
        pipe = redis.pipeline(transaction=False)
        for job_id, arg in zip(job_ids[offset : offset + 5_000], args[offset : offset + 5_000], strict=True):
            payload = arq_serialize_job(function, (arg,), {}, None, now_ms, serializer=serialize_job)
            pipe.psetex(f"arq:job:{job_id}", JOB_TTL_MS, payload)
            pipe.zadd(queue, {job_id: now_ms})
        await pipe.execute()


async def command_counts(redis: Any) -> Counter[str]:
    stats = await redis.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name.startswith("cmdstat_") and name != "cmdstat_info"
        }
    )


async def wait_drained(redis: Any, queue: str, procs: list[subprocess.Popen[bytes]], timeout: float) -> int:
    """Poll ``ZCARD`` until the queue is empty; returns how many ZCARDs the bench sent."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        if await redis.zcard(queue) == 0:
            return polls
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue {queue} not drained within {timeout:.0f} s")
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker process exited early (status {[p.poll() for p in procs]})")
        await asyncio.sleep(0.01)


def cpu_seconds(pid: int, comm: str | None = None) -> float:
    """User + system CPU of a live local process (0 if gone, or if its name lacks ``comm``)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            head, _, tail = stat.read().rpartition(")")
    except OSError:
        return 0.0
    if comm is not None and comm not in head:
        return 0.0
    fields = tail.split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backend_pids(conn: Any, application_name: str) -> list[int]:
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name)
    return [int(row["pid"]) for row in rows]


async def wait_ready(redis: Any, conn: Any, side: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the process polls: ours has written its heartbeat and opened its pool; a baseline
    has set its ready key (after opening its pool)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if side == "ours":
            beats = await redis.keys(f"fmhl:heartbeat:{QUEUE}:*-{proc.pid}-*")
            ready = bool(beats) and bool(await backend_pids(conn, OURS_APPLICATION_NAME))
        else:
            ready = bool(await redis.exists(f"{READY_KEY_PREFIX}{proc.pid}"))
        if ready:
            return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{side} worker did not start (status {proc.poll()})")
        await asyncio.sleep(0.05)


@dataclass(slots=True)
class CpuUse:
    """CPU seconds of the worker process, its Postgres backends and the Redis server."""

    worker: float
    postgres: float
    redis: float

    def __sub__(self, other: CpuUse) -> CpuUse:
        return CpuUse(self.worker - other.worker, self.postgres - other.postgres, self.redis - other.redis)


async def cpu_use(redis: Any, conn: Any, side: str, proc: subprocess.Popen[bytes]) -> CpuUse:
    name = {"ours": OURS_APPLICATION_NAME, "insert": INSERT_APPLICATION_NAME}.get(side)
    backends = await backend_pids(conn, name) if name else []
    server = int((await redis.info("server"))["process_id"])
    return CpuUse(
        cpu_seconds(proc.pid),
        sum(cpu_seconds(pid, "postgres") for pid in backends),
        cpu_seconds(server, "redis"),
    )


@dataclass(slots=True)
class StormRound:
    side: str
    jobs: int
    seconds: float
    commands: Counter[str]
    problem: str | None
    killed: int
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def commands_per_job(self) -> float:
        return sum(self.commands.values()) / self.jobs


ROWS_BY_CLOCK = {
    "ours": """SELECT count(*) AS total, count(DISTINCT job_id) AS distinct_jobs,
                      min(failed_at) AS first, max(captured_at) AS last
               FROM dead_letter_queue WHERE queue_name = 'distribute_lead' AND job_id LIKE $1 || '%'""",
    "insert": """SELECT count(*) AS total, count(DISTINCT job_id) AS distinct_jobs,
                        min(failed_at) AS first, max(captured_at) AS last
                 FROM bench_failures WHERE job_id LIKE $1 || '%'""",
}


async def _window_from_rows(database_url: str, side: str, prefix: str, jobs: int) -> tuple[float, str | None]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(ROWS_BY_CLOCK[side], prefix)
    finally:
        await conn.close()
    problem = None
    if row["total"] != jobs or row["distinct_jobs"] != jobs:
        problem = f"{side} {prefix}: {row['total']} rows for {row['distinct_jobs']} distinct of {jobs} jobs"
    if row["first"] is None:
        raise RuntimeError(problem)
    return (row["last"] - row["first"]).total_seconds(), problem


async def _window_from_results(redis: Any, job_ids: list[str]) -> tuple[float, str | None]:
    starts: list[int] = []
    finishes: list[int] = []
    for offset in range(0, len(job_ids), 1_000):
        chunk = job_ids[offset : offset + 1_000]
        for raw in await redis.mget([result_key_prefix + job_id for job_id in chunk]):
            if raw is not None:
                result = deserialize_job(raw)
                starts.append(int(result["st"]))
                finishes.append(int(result["ft"]))
    problem = None
    if len(starts) != len(job_ids):
        problem = f"bare: {len(starts)} arq results for {len(job_ids)} jobs"
    if not starts:
        raise RuntimeError(problem)
    return (max(finishes) - min(starts)) / 1000, problem


async def storm_round(backends: Backends, redis: Any, side: str, jobs: int) -> StormRound:
    prefix = f"storm-{side}-{uuid.uuid4().hex[:8]}-"
    job_ids = [f"{prefix}{n}" for n in range(jobs)]
    conn = await asyncpg.connect(backends.database_url)
    procs = [start(command(side), worker_env(backends))]
    try:
        await wait_ready(redis, conn, side, procs[0])
        before = await command_counts(redis)
        cpu_before = await cpu_use(redis, conn, side, procs[0])
        await enqueue_raw(redis, QUEUE, "distribute_lead", job_ids, [f"not-a-uuid-{n}" for n in range(jobs)])
        zcards = await wait_drained(redis, QUEUE, procs, DRAIN_TIMEOUT_SECONDS)
        cpu = await cpu_use(redis, conn, side, procs[0]) - cpu_before
        after = await command_counts(redis)
    finally:
        killed = stop(procs)
        await conn.close()
    delta = Counter({name: after[name] - before.get(name, 0) for name in after})
    delta.subtract({"zcard": zcards, "psetex": jobs, "zadd": jobs})  # the bench's own
    delta = +delta  # drop zero and negative counts
    if side == "bare":
        seconds, problem = await _window_from_results(redis, job_ids)
    else:
        seconds, problem = await _window_from_rows(backends.database_url, side, prefix, jobs)
    return StormRound(side, jobs, seconds, delta, problem, killed, cpu)


@dataclass(slots=True)
class StormRounds:
    by_side: dict[str, list[StormRound]] = field(default_factory=lambda: {side: [] for side in SIDES})

    def rates(self, side: str) -> list[float]:
        return [r.rate for r in self.by_side[side]]

    def median_rate(self, side: str) -> float:
        return statistics.median(self.rates(side))

    def ratio(self, side: str, baseline: str) -> float:
        pairs = zip(self.rates(side), self.rates(baseline), strict=True)
        return statistics.median(o / b for o, b in pairs)

    def commands_per_job(self, side: str) -> float:
        return statistics.median(r.commands_per_job for r in self.by_side[side])

    def top_commands(self, side: str, n: int = 6) -> str:
        total: Counter[str] = Counter()
        jobs = 0
        for r in self.by_side[side]:
            total.update(r.commands)
            jobs += r.jobs
        return ", ".join(f"{name} {count / jobs:.2f}" for name, count in total.most_common(n))

    def cpu_ms_per_job(self, side: str) -> str:
        rounds = self.by_side[side]

        def median(part: str) -> float:
            return statistics.median(1000 * getattr(r.cpu, part) / r.jobs for r in rounds)

        worker, postgres, redis = median("worker"), median("postgres"), median("redis")
        return f"{side} {worker:.2f} + {postgres:.2f} + {redis:.2f} = {worker + postgres + redis:.2f}"

    def describe(self) -> str:
        return "; ".join(f"{side} [{', '.join(f'{v:,.0f}' for v in self.rates(side))}]/s" for side in SIDES)


async def storm_case(backends: Backends, scale: Scale) -> list[Result]:
    jobs = scale.storm_jobs
    progress(
        f"failure storm: {jobs:,} failing distribute_lead jobs per side and round; processes "
        f"ours (fmhl-ops worker), insert (arq + one INSERT), bare (arq); max_jobs={MAX_JOBS}, poll delay 0"
    )
    conn = await asyncpg.connect(backends.database_url)
    try:
        await conn.execute(CREATE_BENCH_FAILURES)
    finally:
        await conn.close()
    redis = create_redis(backends.redis_url)
    rounds = StormRounds()
    try:
        if scale.name != "toy":  # toy (make test) checks the case runs: its figures mean nothing
            for side in SIDES:  # warm-up: imports, page cache, Postgres plans
                await storm_round(backends, redis, side, max(50, jobs // 10))
        for index in range(scale.rounds):
            for side in ORDERS[index % len(ORDERS)]:
                rounds.by_side[side].append(await storm_round(backends, redis, side, jobs))
            progress(
                f"storm: round {index + 1}/{scale.rounds}: "
                + ", ".join(f"{side} {rounds.by_side[side][-1].rate:,.0f}/s" for side in SIDES)
            )
    finally:
        await redis.aclose()
    return storm_results(rounds, jobs, scale.rounds)


def storm_results(rounds: StormRounds, jobs: int, n_rounds: int) -> list[Result]:
    problems = [r.problem for side in SIDES for r in rounds.by_side[side] if r.problem]
    killed_by_side = {side: sum(r.killed for r in rounds.by_side[side]) for side in SIDES}
    killed = ", ".join(f"{side} {n}" for side, n in killed_by_side.items() if n)
    exact = sum(all(rounds.by_side[side][i].problem is None for side in SIDES) for i in range(n_rounds))
    ours_cpj = rounds.commands_per_job("ours")
    bare_cpj = rounds.commands_per_job("bare")
    clocks = "ours/insert: first failed_at to last captured_at; bare: arq's first start to last finish"
    return [
        Result(
            "failure storm",
            f"{jobs:,} failures, fmhl-ops worker vs arq + one INSERT",
            rounds.median_rate("ours"),
            "failures/s",
            baseline=rounds.median_rate("insert"),
            ratio=rounds.ratio("ours", "insert"),
            target=">= 1.2",
            note=f"{rounds.describe()}; {clocks}",
        ),
        Result(
            "failure storm",
            f"{jobs:,} failures, fmhl-ops worker vs bare arq",
            rounds.median_rate("ours"),
            "failures/s",
            baseline=rounds.median_rate("bare"),
            ratio=rounds.ratio("ours", "bare"),
            target=">= 0.6",
            note=f"insert vs bare {rounds.ratio('insert', 'bare'):.2f}x; CPU ms per job, worker + its "
            f"Postgres backends + Redis server: {'; '.join(rounds.cpu_ms_per_job(side) for side in SIDES)}",
        ),
        Result(
            "failure storm",
            "Redis commands per job (INFO commandstats), ours vs bare arq",
            ours_cpj,
            "cmd/job",
            baseline=bare_cpj,
            target=f"<= {bare_cpj + 1:.2f}",  # within 1 of bare arq's
            note=(
                f"ours {ours_cpj:.2f} ({rounds.top_commands('ours')}); bare {bare_cpj:.2f} "
                f"({rounds.top_commands('bare')}); insert {rounds.commands_per_job('insert'):.2f}; "
                "commands a Lua script runs count too"
            ),
        ),
        Result(
            "failure storm",
            "rounds with exactly one DLQ row per job",
            exact,
            f"of {n_rounds}",
            target=f">= {n_rounds}",
            note="; ".join(problems)
            or "every side, every round: count and count(DISTINCT job_id) equal the jobs run"
            + (f"; processes that ignored SIGTERM and were killed: {killed}" if killed else ""),
        ),
    ]

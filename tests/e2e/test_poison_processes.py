"""A job that SIGKILLs its own worker, three real worker processes and a supervisor restarting
them (as a Deployment would): the job runs at most ``POISON_AFTER_LOST_TRIES`` times and lands in
the DLQ as ``poison``; every other job on the queue completes exactly once.

Workers run one job at a time (``WORKER_MAX_JOBS=1``) so the poison pill never takes a bystander
down with it: a job sharing a killed worker also loses that try (README, poison quarantine).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import EMAIL_SEND
from tests.e2e.poison_worker_proc import POISON_RUNS_KEY, STEADY_DONE_KEY
from tests.procs import Proc, base_env, program

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3
STEADY_JOBS = 30


def _worker(env: dict[str, str]) -> Proc:
    return program(
        [sys.executable, "-m", "tests.e2e.poison_worker_proc", EMAIL_SEND], env=env, cwd=ROOT
    ).start()


async def test_poison_pill_runs_at_most_twice_and_the_rest_of_the_queue_completes(
    database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    env = base_env(DATABASE_URL=database_url, REDIS_URL=redis_url, WORKER_MAX_JOBS="1")
    workers = [_worker(env) for _ in range(WORKERS)]
    restarts = 0
    try:
        deadline = time.monotonic() + 60
        while len([b for b in await read_heartbeats(redis) if b.queue == EMAIL_SEND]) < WORKERS:
            assert time.monotonic() < deadline, "\n".join(w.output()[-2000:] for w in workers)
            await asyncio.sleep(0.1)
        for n in range(STEADY_JOBS // 2):
            await enqueue(redis, "steady", queue=EMAIL_SEND, n=n)
        poison_id = await enqueue(redis, "poison_pill", queue=EMAIL_SEND, correlation_id="corr-pill")
        for n in range(STEADY_JOBS // 2, STEADY_JOBS):
            await enqueue(redis, "steady", queue=EMAIL_SEND, n=n)

        deadline = time.monotonic() + 90
        while True:
            for index, proc in enumerate(workers):  # the supervisor: a dead worker is restarted
                if not proc.running():
                    proc.stop()
                    workers[index] = _worker(env)
                    restarts += 1
            rows = await clean_db.fetch("SELECT * FROM dead_letter_queue")
            done = await redis.lrange(STEADY_DONE_KEY, 0, -1)
            if rows and len(done) >= STEADY_JOBS:
                break
            assert time.monotonic() < deadline, f"rows={len(rows)} done={len(done)}\n" + "\n".join(
                w.output()[-2000:] for w in workers
            )
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # nothing more may happen: no third run, no second row

        runs = await redis.lrange(POISON_RUNS_KEY, 0, -1)
        assert len(runs) == 2, runs  # POISON_AFTER_LOST_TRIES (default 2)
        assert restarts == 2
        rows = await clean_db.fetch("SELECT * FROM dead_letter_queue")
        assert len(rows) == 1
        row = rows[0]
        assert row["job_id"] == poison_id and row["reason"] == "poison" and row["attempts"] == 2
        assert row["function"] == "poison_pill" and row["correlation_id"] == "corr-pill"
        done = await redis.lrange(STEADY_DONE_KEY, 0, -1)
        assert sorted(int(n) for n in done) == list(range(STEADY_JOBS))  # each exactly once
        assert await redis.zcard(EMAIL_SEND) == 0
        assert any(
            '"event": "job_quarantined"' in w.output() or '"event":"job_quarantined"' in w.output()
            for w in workers
        )
    finally:
        for proc in workers:
            proc.stop()

"""Issue 17's recipe, 50 times: ``fmhl-ops worker email_send`` with ``WORKER_MAX_JOBS=50`` and
``WORKER_POLL_DELAY_SECONDS=0`` drains a storm of failing emails; once every row is in the DLQ it
gets SIGTERM and must be gone within 15 s, exit 0. Before the fix 22 of these 50 runs hung (and 9
of 20 of the issue's own recipe), polling an empty queue: arq's cancel was lost inside redis-py's
``wait_for`` (``worker/shutdown.py``).

Scaled to fit the suite (~1 min): 10 rounds of 5 processes at once on one queue, 100 failing
emails per process per round. The hang lies in the poll loop after the storm, not in the storm
itself: what a run needs is a worker that has drained real failures (full batches of 50, DLQ
group commits) and is polling an idle queue at poll delay 0 when the signal lands; each process
gets its SIGTERM after its own random 0-300 ms, so the signals land at random points of that loop.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from typing import Any

import pytest

from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from tests.procs import Proc, base_env
from tests.reliability.support import wait_until

# serial: a storm of 50 worker processes, each asserted to exit within a bound
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

ROUNDS = 10
PROCESSES = 5
EMAILS_PER_PROCESS = 100
EXIT_BOUND_SECONDS = 15.0


async def _storm(redis: Any, prefix: str, count: int) -> None:
    for n in range(count):  # an unknown template is a permanent failure: one DLQ row each
        key = f"{prefix}-{n}"
        await enqueue(
            redis,
            "send_email",
            job_id=key,
            to="ops@example.test",
            template="no_such_template",
            context={},
            idempotency_key=key,
        )


def _sigterm_and_wait(proc: Proc, delay: float) -> tuple[int | None, float]:
    time.sleep(delay)
    proc.signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        return proc.wait(EXIT_BOUND_SECONDS), time.monotonic() - signalled
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - signalled


@pytest.mark.timeout(300)
async def test_storm_then_sigterm_stops_every_worker(
    database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    env = base_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        WORKER_MAX_JOBS="50",
        WORKER_POLL_DELAY_SECONDS="0",
        DB_POOL_MAX_SIZE="4",
    )
    rng = random.Random(17)
    exits: list[tuple[int | None, float]] = []
    outputs: list[str] = []
    started = time.monotonic()
    for round_no in range(ROUNDS):
        prefix = f"storm{round_no}"
        total = PROCESSES * EMAILS_PER_PROCESS
        await _storm(redis, prefix, total)
        procs = [Proc(["worker", EMAIL_SEND], env).start() for _ in range(PROCESSES)]
        try:

            async def all_captured(prefix: str = prefix, total: int = total) -> bool:
                rows = await clean_db.fetchval(
                    "SELECT count(*) FROM dead_letter_queue WHERE job_id LIKE $1", f"{prefix}-%"
                )
                return int(rows) == total

            await wait_until(all_captured, 60, f"{total} DLQ rows of round {round_no}", 0.05)
            results = await asyncio.gather(
                *(asyncio.to_thread(_sigterm_and_wait, p, rng.uniform(0, 0.3)) for p in procs)
            )
            exits.extend(results)
            for proc, (code, _) in zip(procs, results, strict=True):
                if code != 0:
                    outputs.append(proc.output()[-2000:])
        finally:
            for proc in procs:
                proc.stop(timeout=1)
    rows = await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue")
    stopped = sum(code == 0 for code, _ in exits)
    slowest = max(seconds for _, seconds in exits)
    print(
        f"\nstorm then SIGTERM, max jobs 50, poll delay 0: {stopped}/{len(exits)} workers exited 0 "
        f"within {EXIT_BOUND_SECONDS:g} s (slowest {slowest:.2f} s); {ROUNDS} rounds of {PROCESSES} "
        f"processes x {EMAILS_PER_PROCESS} failing emails, {rows} DLQ rows; "
        f"{time.monotonic() - started:.0f} s"
    )
    assert stopped == ROUNDS * PROCESSES, outputs[:2]
    assert rows == ROUNDS * PROCESSES * EMAILS_PER_PROCESS

"""``python -m bench.tracing_worker JOBS OUT``: one side of the ``tracing`` case's no-op worker rounds.

A fresh interpreter per run, because tracing is per process (a ``TracerProvider`` and the asyncpg
and redis instrumentations are installed once and for good): it configures logging and tracing
from its environment exactly as ``fmhl-ops worker`` does (``cli.main``), then runs the ``overhead``
case's side A (``bench.worker_cases.WorkerBench.ours``: ``FmhlWorker`` with the failure decorator,
burst) over ``JOBS`` no-op jobs, and writes ``{"jobs_per_s", "cpu_us_per_job", "tracing"}`` to ``OUT``.
The rate is ``Worker.main()`` alone: start-up of this interpreter and the final flush of spans
(``shutdown_tracing``) are outside it; spans exported while the worker runs are inside. The CPU
per job is this process's (every thread: the span exporter's too) over the whole run, enqueue included.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import orjson

from bench.common import Backends
from bench.worker_cases import QUEUE, noop, worker_bench
from shared.infra.logs import configure_logging
from shared.infra.tracing import configure_tracing, shutdown_tracing, tracing_enabled


async def run(jobs: int) -> tuple[float, float]:
    backends = Backends(os.environ["DATABASE_URL"], os.environ["REDIS_URL"], source="bench.tracing case")
    async with worker_bench(backends) as bench:
        started = time.process_time()
        rate = await bench.ours(noop, jobs, prefix="bench-tracing-")
        return rate, 1e6 * (time.process_time() - started) / jobs


def main(jobs: int, out: Path) -> None:
    configure_logging("INFO", "json")
    configure_tracing(f"fmhl-ops-worker-{QUEUE}")
    try:
        rate, cpu_us = asyncio.run(run(jobs))
    finally:
        shutdown_tracing()
    out.write_bytes(
        orjson.dumps({"jobs_per_s": rate, "cpu_us_per_job": cpu_us, "tracing": tracing_enabled()})
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))

"""``python -m bench.worker_proc QUEUE``: a worker process exactly as ``fmhl-ops worker QUEUE``
runs it (``worker.process.run_worker``: settings from the environment, JSON logs, arq's signal
handling), with the bench's 10 ms I/O job ``bench_io`` registered instead of the catalogue's."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from shared.infra.config import load_settings
from shared.infra.logs import configure_logging
from shared.jobs.policy import RetryPolicy
from worker.failure import with_failure_policy
from worker.process import run_worker

IO_JOB_SECONDS = 0.01


async def bench_io(ctx: dict[str, Any], n: int) -> int:
    await asyncio.sleep(IO_JOB_SECONDS)
    return n


def main(queue: str) -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    functions = [with_failure_policy(queue, "bench_io", RetryPolicy(), bench_io)]
    asyncio.run(run_worker(queue, settings, functions=functions))


if __name__ == "__main__":
    main(sys.argv[1])

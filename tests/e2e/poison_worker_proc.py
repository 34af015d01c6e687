"""``python -m tests.e2e.poison_worker_proc QUEUE``: a worker process as ``fmhl-ops worker QUEUE``
runs it (``worker.process.run_worker``), with two test-only jobs registered instead of the
catalogue's: ``poison_pill`` notes its run and SIGKILLs its own worker; ``steady`` notes it ran.

Only arq's in-progress lock is shortened (arq: longest job timeout + 10 s) to ``LOCK_SECONDS``, so
a vanished try is picked up again after 3 s instead of 12; nothing else differs from production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from shared.infra.config import load_settings
from shared.infra.logs import configure_logging
from shared.jobs.policy import RetryPolicy
from worker import fmhl_worker
from worker.failure import with_failure_policy
from worker.process import run_worker

LOCK_SECONDS = 3
POISON_RUNS_KEY = "test:poison:runs"
STEADY_DONE_KEY = "test:steady:done"

_original_init = fmhl_worker.FmhlWorker.__init__


def _init_with_short_lock(self: fmhl_worker.FmhlWorker, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    self.in_progress_timeout_s = LOCK_SECONDS


async def poison_pill(ctx: dict[str, Any]) -> None:
    await ctx["redis"].rpush(POISON_RUNS_KEY, f"{os.getpid()}:{ctx['job_try']}")
    os.kill(os.getpid(), signal.SIGKILL)


async def steady(ctx: dict[str, Any], n: int) -> int:
    await asyncio.sleep(0.02)
    await ctx["redis"].rpush(STEADY_DONE_KEY, str(n))
    return n


def main(queue: str) -> None:
    fmhl_worker.FmhlWorker.__init__ = _init_with_short_lock  # type: ignore[method-assign]
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    policy = RetryPolicy(timeout_seconds=2)
    functions = [
        with_failure_policy(queue, "poison_pill", policy, poison_pill),
        with_failure_policy(queue, "steady", policy, steady),
    ]
    asyncio.run(run_worker(queue, settings, functions=functions))


if __name__ == "__main__":
    main(sys.argv[1])

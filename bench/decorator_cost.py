"""``python bench/decorator_cost.py ROOT N [OTLP_ENDPOINT]``: per-job cost of the failure decorator.

Calls the decorated no-op job ``N`` times directly (no arq, no Redis) with the code under ``ROOT``
first on ``sys.path`` (this checkout, or another one such as main's, for an A/B in fresh
interpreters) and prints microseconds per job. With ``OTLP_ENDPOINT`` tracing is on and each job
span is exported there over OTLP/HTTP (issue 20: tracing off must cost nothing measurable).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any


async def noop(ctx: dict[str, Any], n: int = 0) -> int:
    return n


async def per_job_us(n: int) -> float:
    from shared.infra.config import Settings
    from shared.infra.metrics import Metrics
    from shared.jobs.policy import RetryPolicy
    from worker.failure import with_failure_policy

    fn = with_failure_policy("email_send", "noop", RetryPolicy(), noop)
    ctx = {"job_id": "j", "job_try": 1, "settings": Settings(None, None), "metrics": Metrics(), "redis": None}
    for _ in range(2000):  # warm-up
        await fn.coroutine(ctx, _correlation_id="c")
    started = time.perf_counter()
    for _ in range(n):
        await fn.coroutine(ctx, _correlation_id="c")
    return (time.perf_counter() - started) / n * 1e6


def main(argv: list[str]) -> None:
    sys.path.insert(0, argv[1])
    if len(argv) > 3:
        from shared.infra.tracing import configure_tracing

        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = argv[3]
        configure_tracing("fmhl-ops-bench")
    print(f"{asyncio.run(per_job_us(int(argv[2]))):.2f} us/job")


if __name__ == "__main__":
    main(sys.argv)

"""``python -m bench.arq_baseline MODE QUEUE``: the baseline worker processes of the storm and
scale-out cases — plain ``arq.worker.Worker``, none of our code on the job path.

Modes (``WORKER_MAX_JOBS`` and ``WORKER_POLL_DELAY_SECONDS`` from the environment, as ours):

* ``bare``: ``distribute_lead(lead_id)`` raises at once for a non-UUID id; nothing is stored.
* ``insert``: the straightforward capture a team would write: the job stores its failure with one
  asyncpg ``INSERT`` (traceback included; pool of 10) into ``bench_failures``, then raises.
* ``io``: the scale-out job, 10 ms of ``asyncio.sleep`` (``bench.worker_proc.bench_io``).

Both baselines use our orjson job serializer (the wire format is a contract, not overhead) and log
nothing per job (arq's logger is silenced): the cheapest each can be. On start-up each process sets
``bench:ready:<pid>`` so the bench knows it is polling.

SIGTERM: arq's own handler (cancel the jobs and ``Worker.main`` once), then the main task is
cancelled again until it is done, as our worker's shutdown does (``cancel_until_done``). arq's
single cancel is sometimes lost: seen here, ``Worker.main`` stayed "cancelling" in
``_poll_iteration`` with no job left, until the bench's stop SIGKILLed it 15 s later (one storm
round in ten or so, 15 s of ``make test`` each time). Shutdown only: outside every measured window.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from arq.worker import Worker, func

from bench.worker_proc import IO_JOB_SECONDS
from shared.infra.cancellation import cancel_until_done
from shared.infra.redis import create_redis, deserialize_job, serialize_job

READY_KEY_PREFIX = "bench:ready:"
INSERT_POOL_SIZE = 10
INSERT_APPLICATION_NAME = "bench-arq-insert"

CREATE_BENCH_FAILURES = """
CREATE TABLE IF NOT EXISTS bench_failures (
    job_id        text PRIMARY KEY,
    function      text NOT NULL,
    args          jsonb NOT NULL,
    error_type    text NOT NULL,
    error_message text NOT NULL,
    stack_trace   text NOT NULL,
    failed_at     timestamptz NOT NULL,
    captured_at   timestamptz NOT NULL DEFAULT now()
)
"""

INSERT_FAILURE = """
INSERT INTO bench_failures (job_id, function, args, error_type, error_message, stack_trace, failed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


def _check_lead_id(lead_id: str) -> None:
    try:
        uuid.UUID(lead_id)
    except ValueError:
        raise ValueError(f"lead_id must be a UUID, got {lead_id[:64]!r}") from None


async def bare_distribute_lead(ctx: dict[str, Any], lead_id: str) -> None:
    _check_lead_id(lead_id)


async def insert_distribute_lead(ctx: dict[str, Any], lead_id: str) -> None:
    try:
        _check_lead_id(lead_id)
    except ValueError as exc:
        failed_at = datetime.now(UTC)
        async with ctx["pg"].acquire() as conn:
            await conn.execute(
                INSERT_FAILURE,
                ctx["job_id"],
                "distribute_lead",
                orjson.dumps([lead_id]).decode(),
                type(exc).__name__,
                str(exc),
                traceback.format_exc(),
                failed_at,
            )
        raise


async def bench_io(ctx: dict[str, Any], n: int) -> int:
    await asyncio.sleep(IO_JOB_SECONDS)
    return n


async def _run(mode: str, queue: str) -> None:
    redis = create_redis(os.environ["REDIS_URL"], timeout_seconds=10)
    functions = {
        "bare": [func(bare_distribute_lead, name="distribute_lead")],
        "insert": [func(insert_distribute_lead, name="distribute_lead")],
        "io": [func(bench_io, name="bench_io")],
    }[mode]

    async def startup(ctx: dict[str, Any]) -> None:
        if mode == "insert":
            ctx["pg"] = await asyncpg.create_pool(
                os.environ["DATABASE_URL"],
                min_size=INSERT_POOL_SIZE,
                max_size=INSERT_POOL_SIZE,
                server_settings={"application_name": INSERT_APPLICATION_NAME},
            )
        await redis.set(f"{READY_KEY_PREFIX}{os.getpid()}", "1", ex=600)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "pg" in ctx:
            await ctx["pg"].close()

    worker = Worker(
        functions=functions,
        queue_name=queue,
        redis_pool=redis,
        max_jobs=int(os.environ.get("WORKER_MAX_JOBS") or 50),
        poll_delay=float(os.environ.get("WORKER_POLL_DELAY_SECONDS") or 0),
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        on_startup=startup,
        on_shutdown=shutdown,
    )
    main_task = asyncio.ensure_future(worker.main())
    worker.main_task = main_task
    stopping: list[asyncio.Task[bool]] = []

    def on_sigterm() -> None:
        worker.handle_sig(signal.SIGTERM)
        if not stopping:
            stopping.append(
                asyncio.ensure_future(cancel_until_done(main_task, timeout=10, name="arq-baseline"))
            )

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await worker.main_task
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()


def main(mode: str, queue: str) -> None:
    logging.getLogger("arq").setLevel(logging.CRITICAL)
    asyncio.run(_run(mode, queue))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

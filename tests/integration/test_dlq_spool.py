"""Postgres down while jobs fail: every failure is spooled, then drained exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cli.embedded import EmbeddedPostgres
from shared.dlq.spool import drain_spool, spool_size
from shared.infra.config import Settings
from shared.infra.db import create_pool
from shared.infra.metrics import Metrics
from shared.infra.migrations import migrate
from shared.infra.redis import DLQ_SPOOL_INFLIGHT_KEY, DLQ_SPOOL_KEY
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from tests.worker_support import job, run_burst

JOBS = 200


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    try:
        await migrate(pg.dsn)
        yield pg
    finally:
        pg.destroy()


async def _pool(pg: EmbeddedPostgres) -> Any:
    return await create_pool(Settings(database_url=pg.dsn, redis_url=None), application_name="spool-test")


async def test_failures_while_postgres_is_down_are_drained_exactly_once(
    own_postgres: EmbeddedPostgres, redis: Any, redis_url: str
) -> None:
    async def explode(ctx: dict[str, Any], n: int) -> None:
        raise ValueError(f"job {n} is broken")

    settings = Settings(database_url=own_postgres.dsn, redis_url=redis_url)
    pool = await _pool(own_postgres)
    own_postgres.stop()
    try:
        for n in range(JOBS):
            await enqueue(redis, "explode", queue=EMAIL_SEND, n=n)
        metrics = Metrics()
        functions = [job(EMAIL_SEND, "explode", explode, max_tries=1)]
        await run_burst(EMAIL_SEND, settings, pool, redis, functions, metrics=metrics, max_jobs=20)
        assert await spool_size(redis) == JOBS
    finally:
        pool.terminate()

    own_postgres.start()
    # A drainer that "dies" after moving a record to in-flight, before inserting it.
    await redis.lmove(DLQ_SPOOL_KEY, DLQ_SPOOL_INFLIGHT_KEY, "LEFT", "RIGHT")
    pools = [await _pool(own_postgres), await _pool(own_postgres)]
    try:
        results = await asyncio.gather(*(drain_spool(p, redis, Metrics()) for p in pools))
        assert sum(r.inserted for r in results) == JOBS
        assert await spool_size(redis) == 0
        count, distinct = await pools[0].fetchrow(
            "SELECT count(*), count(DISTINCT (queue_name, job_id)) FROM dead_letter_queue"
        )
        assert count == distinct == JOBS
        again = await drain_spool(pools[0], redis)
        assert again.inserted == 0
    finally:
        for p in pools:
            await p.close()


async def test_drain_puts_the_record_back_when_postgres_fails(
    own_postgres: EmbeddedPostgres, redis: Any
) -> None:
    from shared.dlq.capture import FailureRecord
    from shared.infra.logs import now_utc

    record = FailureRecord(
        queue=EMAIL_SEND,
        job_id="back-1",
        function="f",
        args=[],
        kwargs={},
        error_type="E",
        error_message="m",
        stack_trace="",
        fingerprint="fp",
        attempts=1,
        reason="permanent",
        failed_at=now_utc(),
    )
    await redis.rpush(DLQ_SPOOL_KEY, record.to_json())
    pool = await _pool(own_postgres)
    own_postgres.stop()
    try:
        with pytest.raises(Exception):  # noqa: B017 - any connection failure
            await drain_spool(pool, redis)
        assert await redis.llen(DLQ_SPOOL_KEY) == 1 and await redis.llen(DLQ_SPOOL_INFLIGHT_KEY) == 0
    finally:
        pool.terminate()
        own_postgres.start()
    pool = await _pool(own_postgres)
    try:
        assert (await drain_spool(pool, redis)).inserted == 1
    finally:
        await pool.close()

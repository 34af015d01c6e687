"""Poison-job quarantine (worker/poison.py) with a real arq worker over real Redis and Postgres.

A vanished try is simulated the way arq leaves it: its try counter (``arq:retry:{id}``) was
incremented at pickup and nothing else was written. The process-level proof (a job that SIGKILLs
its worker, three supervised worker processes) is tests/e2e/test_poison_processes.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from arq.constants import retry_key_prefix

from shared.infra.config import Settings
from shared.infra.metrics import Metrics
from shared.infra.redis import cancelled_job_key, job_lost_tries_key
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from shared.jobs.retry_trace import record_retry
from tests.integration.test_worker_capture import _dlq_rows, _metric
from tests.worker_support import job, run_burst
from worker.poison import check_pickup

QUEUE = EMAIL_SEND


async def test_a_try_that_left_no_trace_counts_as_vanished(redis: Any) -> None:
    first = await check_pickup(redis, "j1", 1, 2)
    assert (first.lost_tries, first.quarantine) == (0, False)  # a first try has no previous one
    second = await check_pickup(redis, "j1", 2, 2)
    assert (second.lost_tries, second.quarantine) == (1, False)
    third = await check_pickup(redis, "j1", 3, 2)
    assert (third.lost_tries, third.quarantine) == (2, True)
    assert 0 < await redis.ttl(job_lost_tries_key("j1")) <= 86_400


async def test_a_retried_or_cancelled_previous_try_is_not_vanished(redis: Any) -> None:
    await record_retry(
        redis,
        queue=QUEUE,
        job_id="j2",
        job_try=1,
        max_tries=5,
        delay_seconds=1,
        error_type="ConnectionError",
        error_message="refused",
    )
    assert (await check_pickup(redis, "j2", 2, 1)).lost_tries == 0
    await redis.set(cancelled_job_key("j2"), "2")
    assert (await check_pickup(redis, "j2", 3, 1)).lost_tries == 0
    # the trace of try 1 says nothing about try 3: try 3 vanished
    check = await check_pickup(redis, "j2", 4, 1)
    assert (check.lost_tries, check.quarantine) == (1, True)


async def test_job_whose_tries_vanished_is_quarantined_not_run(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    ran: list[int] = []

    async def crashes_workers(ctx: dict[str, Any], lead_id: str) -> None:
        ran.append(ctx["job_try"])

    metrics = Metrics()
    job_id = await enqueue(redis, "crashes_workers", queue=QUEUE, correlation_id="corr-poison", lead_id="L-9")
    # tries 1 and 2 were picked up and vanished with their workers
    await redis.set(retry_key_prefix + job_id, 2)
    await redis.set(job_lost_tries_key(job_id), 1)
    fn = job(QUEUE, "crashes_workers", crashes_workers, max_tries=5)
    await run_burst(QUEUE, settings, clean_db, redis, [fn], metrics=metrics)
    assert ran == []
    rows = await _dlq_rows(clean_db)
    assert len(rows) == 1
    row = rows[0]
    assert row["reason"] == "poison" and row["error_type"] == "PoisonJob" and row["job_id"] == job_id
    assert row["attempts"] == 2 and row["kwargs"] == {"lead_id": "L-9"}  # retryable once fixed
    assert row["correlation_id"] == "corr-poison"
    assert "2 earlier tries vanished" in row["error_message"]
    labels = {"queue": QUEUE, "function": "crashes_workers"}
    assert _metric(metrics, "fmhl_jobs_quarantined_total", **labels) == 1
    assert _metric(metrics, "fmhl_queue_jobs_failed_total", **labels, final="true") == 1
    assert await redis.exists(job_lost_tries_key(job_id)) == 0
    assert await redis.zcard(QUEUE) == 0  # arq finished it: no worker picks it again


async def test_one_vanished_try_below_the_threshold_runs_and_forgets_it(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    ran: list[int] = []

    async def fine(ctx: dict[str, Any]) -> None:
        ran.append(ctx["job_try"])

    job_id = await enqueue(redis, "fine", queue=QUEUE)
    await redis.set(retry_key_prefix + job_id, 1)  # try 1 vanished
    await run_burst(QUEUE, settings, clean_db, redis, [job(QUEUE, "fine", fine)])
    assert ran == [2]
    assert await _dlq_rows(clean_db) == []
    assert await redis.exists(job_lost_tries_key(job_id)) == 0  # the job ended: a reused id starts at 0


async def test_transient_failures_then_retry_are_not_vanished_tries(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """Threshold 1: any vanished try would quarantine the job. Two transient failures don't."""
    ran: list[int] = []

    async def flaky(ctx: dict[str, Any]) -> str:
        ran.append(ctx["job_try"])
        if ctx["job_try"] < 3:
            raise ConnectionError("upstream refused")
        return "ok"

    strict = dataclasses.replace(settings, poison_after_lost_tries=1)
    metrics = Metrics()
    await enqueue(redis, "flaky", queue=QUEUE)
    fn = job(QUEUE, "flaky", flaky, max_tries=5, backoff_base_seconds=0.01, backoff_max_seconds=0.02)
    await run_burst(QUEUE, strict, clean_db, redis, [fn], metrics=metrics)
    assert ran == [1, 2, 3]
    assert await _dlq_rows(clean_db) == []
    assert _metric(metrics, "fmhl_jobs_quarantined_total", queue=QUEUE, function="flaky") == 0

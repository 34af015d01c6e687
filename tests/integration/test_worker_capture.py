"""Failure decorator and silent paths with a real arq Worker over real Redis and Postgres."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shared.dlq.capture import capture
from shared.infra.config import Settings, load_settings
from shared.infra.db import Database
from shared.infra.metrics import Metrics
from shared.infra.redis import create_redis
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from tests.worker_support import job, run_burst
from worker.failure_records import record_from_exception

QUEUE = EMAIL_SEND


async def _dlq_rows(pool: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM dead_letter_queue ORDER BY failed_at")]


def _metric(metrics: Metrics, name: str, **labels: str) -> float:
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_value_error_is_captured_after_first_try_with_every_field(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    async def explode(ctx: dict[str, Any], lead_id: str, count: int) -> None:
        raise ValueError(f"bad lead {lead_id} with count {count}")

    metrics = Metrics()
    job_id = await enqueue(
        redis, "explode", queue=QUEUE, correlation_id="corr-value-1", metrics=metrics, lead_id="L-1", count=3
    )
    await run_burst(
        QUEUE, settings, clean_db, redis, [job(QUEUE, "explode", explode, max_tries=4)], metrics=metrics
    )
    rows = await _dlq_rows(clean_db)
    assert len(rows) == 1
    row = rows[0]
    assert row["queue_name"] == QUEUE and row["job_id"] == job_id and row["function"] == "explode"
    assert row["args"] == [] and row["kwargs"] == {"lead_id": "L-1", "count": 3}  # reserved kwargs removed
    assert row["error_type"] == "ValueError"
    assert row["error_message"] == "bad lead L-1 with count 3"
    assert "Traceback" in row["stack_trace"] and "explode" in row["stack_trace"]
    assert len(row["fingerprint"]) == 16
    assert row["attempts"] == 1 and row["reason"] == "permanent"
    assert row["enqueued_at"] is not None and row["failed_at"] >= row["enqueued_at"]
    assert row["correlation_id"] == "corr-value-1"
    assert row["resolved_at"] is None and row["retry_of"] is None
    assert (
        _metric(metrics, "fmhl_queue_jobs_failed_total", queue=QUEUE, function="explode", final="true") == 1
    )
    assert _metric(metrics, "fmhl_dlq_captured_total", queue=QUEUE) == 1
    assert _metric(metrics, "fmhl_queue_jobs_enqueued_total", queue=QUEUE) == 1


async def test_connection_error_retries_with_growing_delays_then_is_captured_once(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    tries: list[float] = []

    async def flaky(ctx: dict[str, Any]) -> None:
        tries.append(time.monotonic())
        raise ConnectionError("upstream 10.0.0.1:5432 refused")

    metrics = Metrics()
    policy = {"max_tries": 4, "backoff_base_seconds": 0.1, "jitter_ratio": 0.1}
    await enqueue(redis, "flaky", queue=QUEUE)
    await run_burst(QUEUE, settings, clean_db, redis, [job(QUEUE, "flaky", flaky, **policy)], metrics=metrics)
    assert len(tries) == 4
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.18 and gaps[2] >= 0.36
    assert gaps[0] < gaps[1] < gaps[2]
    rows = await _dlq_rows(clean_db)
    assert len(rows) == 1
    assert rows[0]["attempts"] == 4 and rows[0]["reason"] == "exhausted"
    assert rows[0]["error_type"] == "ConnectionError"
    assert _metric(metrics, "fmhl_queue_jobs_failed_total", function="flaky", final="false") == 3
    assert _metric(metrics, "fmhl_queue_jobs_failed_total", function="flaky", final="true") == 1


async def test_timeout_is_retried_then_captured_as_timeout_error(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    async def slow(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    await enqueue(redis, "slow", queue=QUEUE)
    functions = [job(QUEUE, "slow", slow, max_tries=2, timeout_seconds=0.2, backoff_base_seconds=0.05)]
    await run_burst(QUEUE, settings, clean_db, redis, functions)
    rows = await _dlq_rows(clean_db)
    assert [(r["error_type"], r["attempts"], r["reason"]) for r in rows] == [("TimeoutError", 2, "exhausted")]


async def test_success_counts_completed_and_leaves_no_dlq_row(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    async def fine(ctx: dict[str, Any], n: int) -> int:
        return n * 2

    metrics = Metrics()
    await enqueue(redis, "fine", queue=QUEUE, n=21)
    await run_burst(QUEUE, settings, clean_db, redis, [job(QUEUE, "fine", fine)], metrics=metrics)
    assert await _dlq_rows(clean_db) == []
    assert _metric(metrics, "fmhl_queue_jobs_completed_total", queue=QUEUE, function="fine") == 1
    assert _metric(metrics, "fmhl_queue_job_duration_seconds_count", queue=QUEUE, function="fine") == 1


async def test_unknown_function_is_captured_as_function_not_found(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    async def fine(ctx: dict[str, Any]) -> None:
        return None

    job_id = await enqueue(redis, "no_such_function", queue=QUEUE, correlation_id="corr-nf", lead_id="x")
    await run_burst(QUEUE, settings, clean_db, redis, [job(QUEUE, "fine", fine)])
    rows = await _dlq_rows(clean_db)
    assert len(rows) == 1
    assert rows[0]["reason"] == "function_not_found" and rows[0]["function"] == "no_such_function"
    assert rows[0]["job_id"] == job_id and rows[0]["kwargs"] == {"lead_id": "x"}
    assert rows[0]["correlation_id"] == "corr-nf"
    assert rows[0]["error_type"] == "FunctionNotFound"


async def test_expired_job_is_captured_as_expired(settings: Settings, clean_db: Any, redis: Any) -> None:
    async def fine(ctx: dict[str, Any]) -> None:
        return None

    job = await redis.enqueue_job("fine", _queue_name=QUEUE, _expires=0.05)
    await asyncio.sleep(0.3)
    await run_burst(QUEUE, settings, clean_db, redis, [_job(fine)])
    rows = await _dlq_rows(clean_db)
    assert [(r["job_id"], r["reason"], r["error_type"]) for r in rows] == [
        (job.job_id, "expired", "JobExpired")
    ]


def _job(fn: Any) -> Any:
    return job(QUEUE, "fine", fn)


async def test_capturing_the_same_job_twice_leaves_one_row(clean_db: Any, redis: Any) -> None:
    try:
        raise KeyError("missing 'x'")
    except KeyError as exc:
        record = record_from_exception(
            queue=QUEUE,
            job_id=f"dup-{uuid.uuid4().hex}",
            function="send_email",
            args=(),
            kwargs={"to": "a@b.c"},
            exc=exc,
            attempts=1,
            reason="permanent",
            enqueued_at=None,
            correlation_id=None,
            retry_of=None,
        )
    db = Database.from_pool(load_settings({}), clean_db)
    outcomes = await asyncio.gather(*(capture(db, redis, record, None) for _ in range(5)))
    assert sorted(outcomes) == ["duplicate"] * 4 + ["stored"]
    assert len(await _dlq_rows(clean_db)) == 1


async def test_retried_job_failing_again_points_back_with_retry_of(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    async def explode(ctx: dict[str, Any]) -> None:
        raise ValueError("still broken")

    await enqueue(redis, "explode", queue=QUEUE)
    functions = [job(QUEUE, "explode", explode, max_tries=1)]
    await run_burst(QUEUE, settings, clean_db, redis, functions)
    (first,) = await _dlq_rows(clean_db)
    await enqueue(redis, "explode", queue=QUEUE, _dlq_retry_of=str(first["id"]))
    await run_burst(QUEUE, settings, clean_db, redis, functions)
    rows = await _dlq_rows(clean_db)
    assert len(rows) == 2
    assert rows[1]["retry_of"] == first["id"]
    assert rows[1]["kwargs"] == {}
    assert rows[0]["fingerprint"] == rows[1]["fingerprint"]


async def test_capture_falls_back_to_the_spool_then_to_the_log(
    settings: Settings, redis_url: str, capfd: Any
) -> None:
    from shared.dlq.spool import spool_size
    from shared.infra.logs import configure_logging

    try:
        raise RuntimeError("boom 7")
    except RuntimeError as exc:
        record = record_from_exception(
            queue=QUEUE,
            job_id="spool-1",
            function="f",
            args=(1,),
            kwargs={},
            exc=exc,
            attempts=1,
            reason="permanent",
            enqueued_at=None,
            correlation_id="c-spool",
            retry_of=None,
        )

    never_connected = Database(load_settings({}), application_name="test-never-connected")
    client = create_redis(redis_url)
    await client.flushdb()
    assert await capture(never_connected, client, record, None) == "spooled"
    assert await spool_size(client) == 1
    await client.flushdb()
    await client.aclose()
    dead_redis = create_redis("redis://127.0.0.1:1/0", timeout_seconds=0.5)
    configure_logging("INFO", "json")
    capfd.readouterr()
    assert await capture(None, dead_redis, record, None) == "logged"
    out = capfd.readouterr().out
    await dead_redis.aclose()
    assert '"event":"dlq_capture_lost_to_log"' in out
    assert '"postgres_error":"postgres unavailable: no database in this process"' in out
    assert '"job_id":"spool-1"' in out and '"stack_trace"' in out and "boom 7" in out


async def test_a_try_lost_with_its_worker_is_captured_even_when_redis_cannot_answer_the_lookup(
    settings: Settings, clean_db: Any
) -> None:
    """arq deletes a job right after ``finish_failed_job``: a Redis lookup that only refines the
    reason (was it an operator's cancel?) failing must not drop the capture."""
    from arq.jobs import serialize_result

    from shared.infra.redis import serialize_job
    from worker.fmhl_worker import build_worker

    async def fine(ctx: dict[str, Any]) -> None:
        return None

    dead_redis = create_redis("redis://127.0.0.1:1/0", timeout_seconds=0.5)
    worker = build_worker(
        QUEUE,
        settings,
        functions=[_job(fine)],
        redis=dead_redis,
        ctx={"db": Database.from_pool(settings, clean_db)},
    )
    now_ms = int(time.time() * 1000)
    result = serialize_result(
        "fine", (), {"n": 1}, 99, now_ms, False, RuntimeError("gone"), now_ms, now_ms, "lost-1:fine", QUEUE,
        "lost-1", serializer=serialize_job,
    )  # fmt: skip
    try:
        await worker._capture_silent_failure("lost-1", result)
    finally:
        await dead_redis.aclose()
    rows = await _dlq_rows(clean_db)
    assert [(r["job_id"], r["reason"]) for r in rows] == [("lost-1", "worker_lost")]

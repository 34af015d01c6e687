"""Query performance monitoring: every named query is timed; slow ones log ``slow_query``."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.infra.config import Settings
from shared.infra.db import create_pool, fetchval, record_pool_gauges
from shared.infra.logs import configure_logging
from shared.infra.metrics import Metrics


async def test_named_queries_are_timed_and_slow_ones_logged(
    database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    metrics = Metrics()
    settings = Settings(database_url=database_url, redis_url=None, slow_query_ms=50)
    pool = await create_pool(settings, application_name="observer-test", metrics=metrics)
    configure_logging("INFO", "json")
    capfd.readouterr()
    try:
        async with pool.acquire() as conn:
            assert await fetchval(conn, "fast_probe", "SELECT 1") == 1
            await fetchval(conn, "slow_probe", "SELECT pg_sleep(0.08)")
            assert await fetchval(conn, "app_name", "SELECT current_setting('application_name')") == (
                "observer-test"
            )
            assert await fetchval(conn, "json_codec", "SELECT $1::jsonb", {"a": [1, 2]}) == {"a": [1, 2]}
            record_pool_gauges(pool, metrics)
    finally:
        await pool.close()
    lines = [orjson.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    slow = [line for line in lines if line["event"] == "slow_query"]
    assert [line["query"] for line in slow] == ["slow_probe"]
    assert slow[0]["duration_ms"] >= 80
    body, _ = metrics.render()
    counts = {
        sample.labels["query"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "fmhl_db_query_duration_seconds_count"
    }
    assert counts == {"fast_probe": 1, "slow_probe": 1, "app_name": 1, "json_codec": 1}
    assert metrics.db_pool_connections.get({"state": "busy"}) == 1
    assert metrics.db_pool_connections.get({"state": "max"}) == settings.db_pool_max_size


@pytest.mark.serial  # a ~0.3 s wait must land in the 0.5 s bucket
async def test_pool_wait_is_timed_for_every_acquire(database_url: str) -> None:
    """``fmhl_db_pool_wait_seconds``: instant with a connection at hand; the wait when all are busy."""
    metrics = Metrics()
    settings = Settings(database_url=database_url, redis_url=None, db_pool_min_size=1, db_pool_max_size=1)
    pool = await create_pool(settings, application_name="pool-wait-test", metrics=metrics)
    try:
        holder = await pool.acquire()  # the only connection: the next acquire must wait
        waiting = asyncio.create_task(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await pool.release(holder)
        assert await waiting == 1
    finally:
        await pool.close()
    body, _ = metrics.render()
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name.startswith("fmhl_db_pool_wait_seconds")
    }
    assert samples[("fmhl_db_pool_wait_seconds_count", None)] == 2
    assert samples[("fmhl_db_pool_wait_seconds_bucket", "0.01")] == 1  # the first, at once
    assert samples[("fmhl_db_pool_wait_seconds_bucket", "0.25")] == 1  # the second waited ~0.3 s
    assert samples[("fmhl_db_pool_wait_seconds_bucket", "0.5")] == 2
    assert samples[("fmhl_db_pool_wait_seconds_sum", None)] >= 0.3

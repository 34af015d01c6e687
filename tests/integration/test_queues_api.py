"""``GET /api/v1/admin/queues`` and the scrape gauges: real numbers, and 503 (never zeros) when a
backend cannot be reached.

The app runs in-process and commits, so tests use ``clean_db``; Redis is the flushed test db,
or an embedded Redis of the test's own when the test stops it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet
from prometheus_client.parser import text_string_to_metric_families

from cli.embedded import EmbeddedRedis
from shared.controls.pause import pause_queue
from shared.infra.config import Settings
from shared.infra.redis import create_redis
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import Heartbeat, write_heartbeat
from shared.jobs.queues import DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT, SCHEDULER
from shared.jobs.stats import STATS_TIMEOUT_SECONDS
from tests.factories import bulk_create_dlq_entries, create_admin, create_admin_session, create_dlq_entry
from tests.helpers import black_hole_port, closed_port, running_app

QUEUES = "/api/v1/admin/queues"
QUEUE_FIELDS = {
    "name",
    "depth",
    "active",
    "deferred",
    "oldest_job_age_seconds",
    "failed_last_hour",
    "dlq_size",
    "paused",
}


@pytest.fixture
def settings_with_key(settings: Settings) -> Settings:
    return dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())


async def _token(pool: Any, settings: Settings) -> dict[str, str]:
    assert settings.mfa_encryption_key
    admin = await create_admin(pool, mfa_encryption_key=settings.mfa_encryption_key)
    return {"Authorization": f"Bearer {await create_admin_session(pool, admin.user_id)}"}


def _assert_unavailable(response: httpx.Response, dependency: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "dependency_unavailable", body
    assert dependency in body["error"]["message"]
    assert "queues" not in body and "Traceback" not in response.text
    assert response.headers["retry-after"]


def _gauges(text: str) -> dict[tuple[str, str | None], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (
                "fmhl_queue_depth",
                "fmhl_dlq_size",
                "fmhl_queue_oldest_job_age_seconds",
                "fmhl_queue_paused",
            ):
                values[(sample.name, sample.labels.get("queue"))] = float(sample.value)
    return values


async def _seed(pool: Any, redis: Any) -> None:
    """Known queue state: jobs (due, old, deferred), heartbeats and DLQ rows per queue."""
    # distribute_lead: 3 due (the oldest due 120 s ago) + 2 deferred → depth 5, deferred 2.
    await redis.enqueue_job(
        "distribute_lead",
        _queue_name=DISTRIBUTE_LEAD,
        _defer_until=datetime.now(UTC) - timedelta(seconds=120),
    )
    for n in range(2):
        await enqueue(redis, "distribute_lead", lead_id=f"L-{n}")
    await enqueue(redis, "distribute_lead", defer_by_seconds=3600, lead_id="later")
    await redis.enqueue_job("refund_bad_lead", _queue_name=DISTRIBUTE_LEAD, _defer_by=600)
    # report_export: only a deferred job → oldest age 0 (nothing is due yet).
    await enqueue(redis, "export_report", defer_by_seconds=900, export_id="E-1")
    # email_send: empty queue.
    now = time.time()
    beats = [
        Heartbeat(DISTRIBUTE_LEAD, "w-1", "host-a", 2, now),
        Heartbeat(DISTRIBUTE_LEAD, "w-2", "host-b", 1, now - 3),
        Heartbeat(EMAIL_SEND, "w-3", "host-a", 0, now),
        Heartbeat(REPORT_EXPORT, "w-4", "host-c", 1, now),
        Heartbeat(SCHEDULER, "w-5", "host-c", 4, now),
    ]
    for beat in beats:
        await write_heartbeat(redis, beat)

    recent = datetime.now(UTC) - timedelta(minutes=5)
    old = datetime.now(UTC) - timedelta(hours=2)
    # distribute_lead: 3 unresolved recent, 1 resolved recent, 2 unresolved old, 1 resolved old.
    await bulk_create_dlq_entries(pool, 3, job_prefix="dl-new", failed_at=recent, queue_name=DISTRIBUTE_LEAD)
    await bulk_create_dlq_entries(
        pool, 1, job_prefix="dl-new-done", failed_at=recent, resolved_at=recent, queue_name=DISTRIBUTE_LEAD
    )
    await bulk_create_dlq_entries(pool, 2, job_prefix="dl-old", failed_at=old, queue_name=DISTRIBUTE_LEAD)
    await bulk_create_dlq_entries(
        pool, 1, job_prefix="dl-old-done", failed_at=old, resolved_at=old, queue_name=DISTRIBUTE_LEAD
    )
    # email_send: one unresolved from 3 hours ago. scheduler: not one of the three job queues.
    await create_dlq_entry(pool, queue_name=EMAIL_SEND, failed_at=datetime.now(UTC) - timedelta(hours=3))
    await create_dlq_entry(pool, queue_name=SCHEDULER, function="cleanup_dlq")
    # email_send is paused (incident controls): shown in the item and as fmhl_queue_paused 1.
    async with pool.acquire() as conn:
        await pause_queue(conn, redis, queue=EMAIL_SEND, actor="ops@example.test", reason="SMTP outage")


EXPECTED = {
    DISTRIBUTE_LEAD: {"depth": 5, "active": 3, "deferred": 2, "failed_last_hour": 4, "dlq_size": 5},
    EMAIL_SEND: {"depth": 0, "active": 0, "deferred": 0, "failed_last_hour": 0, "dlq_size": 1},
    REPORT_EXPORT: {"depth": 1, "active": 1, "deferred": 1, "failed_last_hour": 0, "dlq_size": 0},
}


async def test_queue_stats_and_scrape_gauges_report_the_same_true_numbers(
    settings_with_key: Settings, clean_db: Any, redis: Any
) -> None:
    headers = await _token(clean_db, settings_with_key)
    await _seed(clean_db, redis)
    async with running_app(settings_with_key) as (_, client):
        # Scrape first, on a fresh app: the gauges come from the scrape path itself.
        scrape = await client.get("/metrics")
        response = await client.get(QUEUES, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"queues"}
    assert [q["name"] for q in body["queues"]] == [DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT]
    by_name = {q["name"]: q for q in body["queues"]}
    for name, expected in EXPECTED.items():
        item = by_name[name]
        assert set(item) == QUEUE_FIELDS
        assert {k: item[k] for k in expected} == expected, (name, item)
        assert all(isinstance(item[k], int) for k in expected)
    assert 119 <= by_name[DISTRIBUTE_LEAD]["oldest_job_age_seconds"] < 135
    assert by_name[EMAIL_SEND]["oldest_job_age_seconds"] == 0
    assert by_name[REPORT_EXPORT]["oldest_job_age_seconds"] == 0
    paused = by_name[EMAIL_SEND]["paused"]
    assert paused is not None and set(paused) == {"by", "reason", "since"}
    assert (paused["by"], paused["reason"]) == ("ops@example.test", "SMTP outage")
    assert datetime.fromisoformat(paused["since"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert by_name[DISTRIBUTE_LEAD]["paused"] is None and by_name[REPORT_EXPORT]["paused"] is None

    assert scrape.status_code == 200
    gauges = _gauges(scrape.text)
    for name, expected in EXPECTED.items():
        assert gauges[("fmhl_queue_depth", name)] == expected["depth"]
        assert gauges[("fmhl_dlq_size", name)] == expected["dlq_size"]
    age = gauges[("fmhl_queue_oldest_job_age_seconds", DISTRIBUTE_LEAD)]
    assert abs(age - by_name[DISTRIBUTE_LEAD]["oldest_job_age_seconds"]) < 5
    assert gauges[("fmhl_queue_oldest_job_age_seconds", REPORT_EXPORT)] == 0
    assert ("fmhl_queue_depth", SCHEDULER) not in gauges
    paused_gauges = {name: gauges[("fmhl_queue_paused", name)] for name in EXPECTED}
    assert paused_gauges == {DISTRIBUTE_LEAD: 0, EMAIL_SEND: 1, REPORT_EXPORT: 0}


async def test_queue_stats_reject_query_parameters_and_need_an_admin(
    settings_with_key: Settings, clean_db: Any, redis: Any
) -> None:
    headers = await _token(clean_db, settings_with_key)
    async with running_app(settings_with_key) as (_, client):
        bad = await client.get(QUEUES, params={"queue": EMAIL_SEND}, headers=headers)
        anonymous = await client.get(QUEUES)
        empty = await client.get(QUEUES, headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
    assert empty.status_code == 200
    assert all(
        q == {"name": q["name"], "paused": None, **dict.fromkeys(QUEUE_FIELDS - {"name", "paused"}, 0)}
        for q in empty.json()["queues"]
    )


@pytest.mark.serial  # asserts the answer within the stats timeout + 2 s
async def test_redis_stopped_mid_test_gives_503_and_the_gauges_keep_their_last_values(
    settings_with_key: Settings, clean_db: Any, tmp_path: Path
) -> None:
    headers = await _token(clean_db, settings_with_key)
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        own = dataclasses.replace(settings_with_key, redis_url=server.url)
        seed = create_redis(server.url)
        try:
            for n in range(3):
                await enqueue(seed, "send_email", to=f"u{n}@example.test")
        finally:
            await seed.aclose()
        async with running_app(own) as (app, client):
            before = await client.get(QUEUES, headers=headers)
            assert before.status_code == 200, before.text
            assert {q["name"]: q["depth"] for q in before.json()["queues"]}[EMAIL_SEND] == 3
            assert (await client.get("/metrics")).status_code == 200

            server.stop()
            started = time.monotonic()
            after = await client.get(QUEUES, headers=headers)
            assert time.monotonic() - started < STATS_TIMEOUT_SECONDS + 2
            _assert_unavailable(after, "redis")

            app.state.ops.queue_gauges_refreshed_at = -1e9  # force a refresh at this scrape
            scrape = await client.get("/metrics")
            assert scrape.status_code == 200
            assert _gauges(scrape.text)[("fmhl_queue_depth", EMAIL_SEND)] == 3  # stale, not zero
    finally:
        server.stop()


async def test_postgres_unreachable_gives_503(settings_with_key: Settings, redis: Any) -> None:
    dead = dataclasses.replace(
        settings_with_key, database_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/fmhl"
    )
    await enqueue(redis, "send_email", to="a@example.test")
    async with running_app(dead, wait_for_db=False) as (_, client):
        response = await client.get(QUEUES, headers={"Authorization": "Bearer " + "x" * 43})
    _assert_unavailable(response, "postgres")


@pytest.mark.serial  # asserts the answer between the stats timeout - 0.2 s and + 2 s
async def test_postgres_hanging_on_the_dlq_gives_503_not_zeros(
    settings_with_key: Settings, clean_db: Any, redis: Any, database_url: str
) -> None:
    """Auth still works, but the DLQ counts cannot be read in time: 503 within the stats timeout."""
    headers = await _token(clean_db, settings_with_key)
    await create_dlq_entry(clean_db, queue_name=EMAIL_SEND)
    locker = await asyncpg.connect(database_url)
    try:
        async with running_app(settings_with_key) as (_, client):
            assert (await client.get(QUEUES, headers=headers)).status_code == 200
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE dead_letter_queue IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = await client.get(QUEUES, headers=headers)
            elapsed = time.monotonic() - started
            await tx.rollback()
            _assert_unavailable(response, "postgres")
            assert STATS_TIMEOUT_SECONDS - 0.2 <= elapsed < STATS_TIMEOUT_SECONDS + 2
            recovered = await client.get(QUEUES, headers=headers)
            assert recovered.status_code == 200
            assert {q["name"]: q["dlq_size"] for q in recovered.json()["queues"]}[EMAIL_SEND] == 1
    finally:
        await asyncio.wait_for(locker.close(), timeout=5)


@pytest.mark.serial  # asserts the answer within the stats timeout + 1.5 s
async def test_redis_hanging_gives_503_within_the_stats_timeout(
    settings_with_key: Settings, clean_db: Any
) -> None:
    headers = await _token(clean_db, settings_with_key)
    with black_hole_port() as port:
        hung = dataclasses.replace(settings_with_key, redis_url=f"redis://127.0.0.1:{port}/0")
        async with running_app(hung) as (_, client):
            started = time.monotonic()
            response = await client.get(QUEUES, headers=headers)
            elapsed = time.monotonic() - started
    _assert_unavailable(response, "redis")
    assert elapsed < STATS_TIMEOUT_SECONDS + 1.5

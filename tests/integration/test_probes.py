"""/health/live and /health/ready against real, dead and hung dependencies."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.infra.config import Settings
from shared.infra.redis import create_redis
from shared.jobs.heartbeat import Heartbeat, write_heartbeat
from shared.jobs.queues import ALL_QUEUES
from tests.helpers import black_hole_port, closed_port, running_app, signal_tree

TIMEOUT = 1.0
SLACK = 0.5


async def test_live_answers_with_postgres_and_redis_down() -> None:
    settings = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/x",
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
    )
    async with running_app(settings, wait_for_db=False) as (_, client):
        response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.json() == {"status": "pass"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["status"] == "fail"


async def test_ready_passes_with_everything_up_and_warns_without_heartbeats(
    settings: Settings, redis: object
) -> None:
    async with running_app(settings) as (app, client):
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/health+json")
        body = response.json()
        assert body["status"] == "warn"
        assert body["releaseId"]
        pg = body["checks"]["postgres:responseTime"][0]
        assert pg["status"] == "pass" and pg["componentType"] == "datastore" and pg["observedUnit"] == "s"
        assert isinstance(pg["observedValue"], float) and pg["time"].endswith("Z")
        assert body["checks"]["redis:responseTime"][0]["status"] == "pass"
        workers = {c["componentId"]: c["status"] for c in body["checks"]["workers:heartbeat"]}
        assert workers == dict.fromkeys(ALL_QUEUES, "warn")

        for queue in ALL_QUEUES:
            await write_heartbeat(
                app.state.ops.redis, Heartbeat(queue, f"w-{queue}", "host", 0, time.time() - 2)
            )
        response = await client.get("/health/ready")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "pass"
        ages = [c["observedValue"] for c in body["checks"]["workers:heartbeat"]]
        assert all(1.5 <= age < 10 for age in ages)


async def _timed_ready(settings: Settings) -> tuple[int, dict[str, object], float]:
    async with running_app(settings) as (_, client):
        started = time.perf_counter()
        response = await client.get("/health/ready")
        return response.status_code, response.json(), time.perf_counter() - started


@pytest.mark.serial  # asserts an answer within the 1 s timeout + 0.5 s
async def test_redis_on_a_closed_port_fails_fast(settings: Settings) -> None:
    dead = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    status, body, elapsed = await _timed_ready(dead)
    assert status == 503 and body["status"] == "fail"
    assert body["checks"]["redis:responseTime"][0]["status"] == "fail"  # type: ignore[index]
    assert elapsed < TIMEOUT + SLACK


@pytest.mark.serial  # asserts an answer within the 1 s timeout + 0.5 s
async def test_redis_that_never_answers_fails_within_the_timeout(settings: Settings) -> None:
    with black_hole_port() as port:
        hung = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")
        status, body, elapsed = await _timed_ready(hung)
    assert status == 503 and body["status"] == "fail"
    assert elapsed < TIMEOUT + SLACK


@pytest.mark.serial  # asserts an answer within the 1 s timeout + 0.5 s
async def test_postgres_on_a_closed_port_or_black_hole_fails(settings: Settings) -> None:
    with black_hole_port() as port:
        for url in (
            f"postgresql://postgres@127.0.0.1:{closed_port()}/x",
            f"postgresql://postgres@127.0.0.1:{port}/x",
        ):
            async with running_app(dataclasses.replace(settings, database_url=url), wait_for_db=False) as (
                _,
                client,
            ):
                started = time.perf_counter()
                response = await client.get("/health/ready")
                assert response.status_code == 503
                assert response.json()["checks"]["postgres:responseTime"][0]["status"] == "fail"
                assert time.perf_counter() - started < TIMEOUT + SLACK
                assert (await client.get("/health/live")).status_code == 200


@pytest.fixture
def own_servers(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, EmbeddedRedis]]:
    pg = EmbeddedPostgres(tmp_path / "pg").start()
    redis = EmbeddedRedis(tmp_path / "redis").start()
    try:
        yield pg, redis
    finally:
        for proc in (pg.process, redis.process):
            if proc is not None and proc.poll() is None:
                signal_tree(proc.pid, signal.SIGCONT)
        pg.destroy()
        redis.stop()


@pytest.mark.serial  # asserts an answer within the 1 s timeout + 0.5 s
async def test_hung_postgres_and_redis_give_503_within_the_timeout(
    own_servers: tuple[EmbeddedPostgres, EmbeddedRedis],
) -> None:
    pg, redis_server = own_servers
    settings = Settings(database_url=pg.dsn, redis_url=redis_server.url, health_check_timeout_seconds=TIMEOUT)
    async with running_app(settings) as (_, client):
        assert (await client.get("/health/ready")).json()["checks"]["postgres:responseTime"][0][
            "status"
        ] == "pass"
        assert pg.process is not None and redis_server.process is not None
        signal_tree(pg.process.pid, signal.SIGSTOP)  # Postgres accepts nothing, answers nothing
        try:
            started = time.perf_counter()
            response = await client.get("/health/ready")
            elapsed = time.perf_counter() - started
            assert response.status_code == 503
            assert response.json()["checks"]["postgres:responseTime"][0]["status"] == "fail"
            assert elapsed < TIMEOUT + SLACK
            assert (await client.get("/health/live")).status_code == 200
        finally:
            signal_tree(pg.process.pid, signal.SIGCONT)
        signal_tree(redis_server.process.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            response = await client.get("/health/ready")
            elapsed = time.perf_counter() - started
            assert response.status_code == 503
            assert response.json()["checks"]["redis:responseTime"][0]["status"] == "fail"
            assert elapsed < TIMEOUT + SLACK
        finally:
            signal_tree(redis_server.process.pid, signal.SIGCONT)


async def test_draining_service_is_not_ready(settings: Settings) -> None:
    async with running_app(settings) as (app, client):
        app.state.ops.draining = True
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "fail"
        assert (await client.get("/health/live")).status_code == 200


async def test_heartbeat_of_one_queue_only(settings: Settings, redis: object) -> None:
    client_redis = create_redis(settings.require_redis_url())
    await write_heartbeat(client_redis, Heartbeat("email_send", "w1", "h", 1, time.time()))
    await client_redis.aclose()
    async with running_app(settings) as (_, client):
        body = (await client.get("/health/ready")).json()
        statuses = {c["componentId"]: c["status"] for c in body["checks"]["workers:heartbeat"]}
        assert statuses["email_send"] == "pass"
        assert statuses["distribute_lead"] == "warn"

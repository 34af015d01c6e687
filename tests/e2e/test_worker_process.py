"""`fmhl-ops worker` as a real process: probes, SIGKILL on the last try, SIGTERM mid-job."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from cli.embedded import free_port
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import EMAIL_SEND
from tests.helpers import black_hole_port
from tests.procs import Proc, base_env, wait_http, wait_until
from tests.smtp import smtp_server


class SlowCollector:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def slow_smtp() -> Iterator[tuple[int, SlowCollector]]:
    handler = SlowCollector(delay=2.0)
    with smtp_server(handler) as port:
        yield port, handler


def _worker_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return base_env(DATABASE_URL=database_url, REDIS_URL=redis_url, **extra)


def _wait_for(predicate: Any, timeout: float, what: str, proc: Proc | None = None) -> Awaitable[None]:
    return wait_until(predicate, timeout, what, *([proc] if proc is not None else []))


async def _send_email_job(redis: Any, key: str) -> str:
    job_id = await enqueue(
        redis,
        "send_email",
        to="provider@example.test",
        template="low_balance",
        context={"provider_name": "Acme", "balance": "3.00", "lead_price": "10.00"},
        idempotency_key=key,
        correlation_id=f"corr-{key}",
    )
    assert job_id is not None
    return job_id


async def test_worker_probes_metrics_and_heartbeat(
    database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    port = free_port()
    proc = Proc(
        ["worker", EMAIL_SEND], _worker_env(database_url, redis_url, WORKER_METRICS_PORT=str(port))
    ).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=30, proc=proc)
        await _send_email_job(redis, "probe-1")

        async def completed() -> bool:
            body = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            return 'fmhl_queue_jobs_completed_total{function="send_email",queue="email_send"} 1' in body or (
                'fmhl_queue_jobs_completed_total{queue="email_send",function="send_email"} 1' in body
            )

        await _wait_for(completed, 30, "the job counter on the worker's /metrics", proc)
        status = await clean_db.fetchval("SELECT status FROM email_outbox WHERE idempotency_key = 'probe-1'")
        assert status == "sent"
        beats = await read_heartbeats(redis)
        assert [b.queue for b in beats] == [EMAIL_SEND]
        live = httpx.get(f"http://127.0.0.1:{port}/health/live").json()
        assert live["status"] == "pass" and live["queue"] == EMAIL_SEND
    finally:
        assert proc.stop() == 0, proc.output()[-2000:]
    lines = [orjson.loads(line) for line in proc.output().splitlines() if line.strip()]
    job_lines = [line for line in lines if line.get("correlation_id") == "corr-probe-1"]
    assert job_lines, "the job's log lines carry its correlation id"
    assert await read_heartbeats(redis) == []  # removed on clean shutdown


async def test_sigkill_on_the_last_try_is_captured_as_worker_lost(
    database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    policies = orjson.dumps({"send_email": {"max_tries": 1, "timeout_seconds": 2}}).decode()
    with black_hole_port() as smtp_port:
        env = _worker_env(
            database_url,
            redis_url,
            EMAIL_BACKEND="smtp",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(smtp_port),
            JOB_POLICIES=policies,
        )
        job_id = await _send_email_job(redis, "kill-1")
        first = Proc(["worker", EMAIL_SEND], env).start()
        try:
            await _wait_for(lambda: redis.exists(f"arq:in-progress:{job_id}"), 30, "the job to start", first)
            first.signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.stop()
        second = Proc(["worker", EMAIL_SEND], env).start()
        try:

            async def captured() -> bool:
                return bool(await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue"))

            await _wait_for(
                captured, 45, "the killed job to be captured", second
            )  # arq's in-progress lock expires
        finally:
            assert second.stop() == 0
    rows = await clean_db.fetch("SELECT * FROM dead_letter_queue")
    assert len(rows) == 1
    row = rows[0]
    assert row["job_id"] == job_id and row["reason"] == "worker_lost" and row["function"] == "send_email"
    assert row["kwargs"]["idempotency_key"] == "kill-1" and row["correlation_id"] == "corr-kill-1"
    assert row["attempts"] == 1


async def test_sigterm_lets_the_running_job_finish_and_nothing_is_captured(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, slow_smtp: tuple[int, SlowCollector]
) -> None:
    smtp_port, collector = slow_smtp
    env = _worker_env(
        database_url, redis_url, EMAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp_port)
    )
    job_id = await _send_email_job(redis, "term-1")
    proc = Proc(["worker", EMAIL_SEND], env).start()
    try:
        await _wait_for(lambda: redis.exists(f"arq:in-progress:{job_id}"), 30, "the job to start", proc)
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        proc.stop()
    assert len(collector.messages) == 1
    assert (
        await clean_db.fetchval("SELECT status FROM email_outbox WHERE idempotency_key = 'term-1'") == "sent"
    )
    assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 0
    assert await redis.zcard(EMAIL_SEND) == 0

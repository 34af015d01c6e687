"""Pausing a queue with real ``fmhl-ops worker email_send`` processes and a real SMTP server.

When a job started is read from the job's own trace: ``email_outbox.created_at`` is committed by
the job at the start of its first try, and the SMTP server stamps each delivery attempt. "Exactly
once" is one outbox row and one accepted message per idempotency key.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import orjson
import pytest

from shared.controls.pause import pause_queue, resume_queue
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import EMAIL_SEND
from tests.procs import Proc, wait_until
from tests.smtp import RecordingSmtp, smtp_env, smtp_server


@pytest.fixture
def smtp() -> Iterator[tuple[int, RecordingSmtp]]:
    handler = RecordingSmtp(delay=1.0)
    with smtp_server(handler) as port:
        yield port, handler


def _wait_for(predicate: Any, timeout: float, what: str, *procs: Proc) -> Awaitable[None]:
    return wait_until(predicate, timeout, what, *procs, interval=0.05)


async def _enqueue(redis: Any, keys: list[str]) -> None:
    for key in keys:
        await enqueue(
            redis,
            "send_email",
            to="provider@example.test",
            template="low_balance",
            context={"provider_name": "Acme", "balance": "3.00", "lead_price": "10.00"},
            idempotency_key=key,
        )


async def _workers_up(redis: Any, count: int) -> bool:
    return len([b for b in await read_heartbeats(redis) if b.queue == EMAIL_SEND]) >= count


async def _outbox(pool: Any) -> dict[str, tuple[float, str]]:
    rows = await pool.fetch("SELECT idempotency_key, created_at, status FROM email_outbox")
    return {r["idempotency_key"]: (r["created_at"].timestamp(), r["status"]) for r in rows}


async def test_two_workers_pause_within_a_second_finish_running_jobs_and_run_everything_once(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, smtp: tuple[int, RecordingSmtp]
) -> None:
    port, server = smtp
    # 2 jobs at a time per worker, 1 s each: the first batch is still running when we pause.
    env = smtp_env(database_url, redis_url, port, WORKER_MAX_JOBS="2")
    workers = [Proc(["worker", EMAIL_SEND], env).start() for _ in range(2)]
    late: Proc | None = None
    try:
        await _wait_for(lambda: _workers_up(redis, 2), 60, "two workers' heartbeats", *workers)
        first = [f"first-{n}" for n in range(20)]
        await _enqueue(redis, first)

        async def some_started() -> bool:
            return len(await _outbox(clean_db)) >= 4

        await _wait_for(some_started, 30, "the first jobs to start", *workers)
        async with clean_db.acquire() as conn:
            await pause_queue(conn, redis, queue=EMAIL_SEND, actor="e2e", reason="SMTP provider incident")
        paused_at = time.time()
        during = [f"during-{n}" for n in range(5)]
        await _enqueue(redis, during)  # enqueueing keeps working
        await asyncio.sleep(3.0)  # > one job (1 s) + the pause refresh (0.5 s): all idle now

        started = await _outbox(clean_db)
        started_late = {k: round(t - paused_at, 3) for k, (t, _) in started.items() if t > paused_at + 1.0}
        assert started_late == {}, f"jobs started more than 1 s after the pause: {started_late}"
        assert 4 <= len(started) < len(first)
        assert all(status == "sent" for _, status in started.values())  # running jobs finished
        assert set(server.delivered()) == set(started)
        assert not set(started) & set(during)
        assert await redis.zcard(EMAIL_SEND) == len(first) + len(during) - len(started)  # the rest waits
        print(f"paused with {len(started)} of {len(first)} started; none started > 1 s after the pause")

        # A worker started while paused stays idle; SIGKILL of an idle paused worker loses nothing.
        late = Proc(["worker", EMAIL_SEND], env).start()
        await _wait_for(lambda: _workers_up(redis, 3), 60, "the third worker's heartbeat", late)
        workers[0].signal(signal.SIGKILL)
        workers[0].wait(timeout=10)
        await asyncio.sleep(1.5)
        assert len(await _outbox(clean_db)) == len(started)
        assert all(proc.running() for proc in (workers[1], late))

        async with clean_db.acquire() as conn:
            await resume_queue(conn, redis, queue=EMAIL_SEND, actor="e2e", reason="provider back")
        everything = set(first) | set(during)

        async def all_sent() -> bool:
            outbox = await _outbox(clean_db)
            return set(outbox) == everything and all(s == "sent" for _, s in outbox.values())

        await _wait_for(all_sent, 60, "every job to run after the resume", workers[1], late)
        await _wait_for(lambda: _zero(redis.zcard(EMAIL_SEND)), 10, "the queue to drain", workers[1], late)
        delivered = server.delivered()
        assert set(delivered) == everything and set(delivered.values()) == {1}  # each exactly once
        assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 0
    finally:
        for proc in [*workers, *([late] if late else [])]:
            proc.stop()


async def _zero(awaitable: Any) -> bool:
    return bool(await awaitable == 0)


async def test_paused_email_send_burns_no_try_during_an_smtp_outage(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, smtp: tuple[int, RecordingSmtp]
) -> None:
    port, server = smtp
    server.delay = 0.0
    server.down = True  # the provider answers 451 to everything
    policies = orjson.dumps({"send_email": {"max_tries": 6, "backoff_base_seconds": 0.2}}).decode()
    worker = Proc(
        ["worker", EMAIL_SEND], smtp_env(database_url, redis_url, port, JOB_POLICIES=policies)
    ).start()
    try:
        await _wait_for(lambda: _workers_up(redis, 1), 60, "the worker's heartbeat", worker)
        # On-call sees the outage and pauses email_send; mail keeps being enqueued meanwhile.
        async with clean_db.acquire() as conn:
            await pause_queue(conn, redis, queue=EMAIL_SEND, actor="e2e", reason="SMTP 451 outage")
        await asyncio.sleep(1.0)  # > the pause refresh: the worker has seen the pause
        keys = [f"outage-{n}" for n in range(10)]
        await _enqueue(redis, keys)
        await asyncio.sleep(3.0)  # with a 0.2 s backoff, an unpaused queue would burn every try here
        assert server.attempts == []  # not one delivery attempt: no try burnt
        assert await clean_db.fetchval("SELECT count(*) FROM email_outbox") == 0
        assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 0
        assert await redis.zcard(EMAIL_SEND) == len(keys)
        assert [await redis.get(f"arq:retry:{k}") for k in await redis.zrange(EMAIL_SEND, 0, -1)] == [
            None
        ] * len(keys)

        server.down = False  # the provider recovers, then on-call resumes
        async with clean_db.acquire() as conn:
            await resume_queue(conn, redis, queue=EMAIL_SEND, actor="e2e")

        async def all_delivered() -> bool:
            return set(server.delivered()) == set(keys)

        await _wait_for(all_delivered, 30, "every email after the resume", worker)
        await _wait_for(lambda: _zero(redis.zcard(EMAIL_SEND)), 10, "the queue to drain", worker)
        assert set(server.delivered().values()) == {1}
        assert [a for a in server.attempts if a[2] == "451"] == []
        assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 0
    finally:
        assert worker.stop() == 0, worker.output()[-2000:]

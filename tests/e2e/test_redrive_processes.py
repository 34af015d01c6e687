"""Redrive tasks with real processes (issue 19 acceptance): ``fmhl-ops worker email_send`` against a
real SMTP server (aiosmtpd), the executor inside ``fmhl-ops worker scheduler``.

Rates are checked from the SMTP server's own receive times. Slack for a loaded machine: over any
1 s window at most rate + ``max_in_flight`` deliveries (the worker may catch up on at most what is
in flight after a stall; the executor itself never sends more than rate + 1 per window).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from shared.dlq.redrive import Actor
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import EMAIL_SEND, SCHEDULER
from shared.redrive_tasks.selection import SelectionFilter, TaskSpec, create_task
from tests.e2e.test_queue_pause_processes import _wait_for
from tests.procs import Proc
from tests.smtp import RecordingSmtp, smtp_env, smtp_server

# serial: asserts delivery within a rate (100/s) and lease takeover timing
pytestmark = pytest.mark.serial

FAST_FAILURE = orjson.dumps({"send_email": {"max_tries": 1}}).decode()


@pytest.fixture
def smtp() -> Iterator[tuple[int, RecordingSmtp]]:
    handler = RecordingSmtp(delay=0.0)
    with smtp_server(handler) as port:
        yield port, handler


def _env(database_url: str, redis_url: str, smtp_port: int) -> dict[str, str]:
    return smtp_env(
        database_url,
        redis_url,
        smtp_port,
        WORKER_MAX_JOBS="40",
        WORKER_POLL_DELAY_SECONDS="0.05",
        JOB_POLICIES=FAST_FAILURE,
    )


FAILED_EMAILS = """
INSERT INTO dead_letter_queue (queue_name, job_id, function, args, kwargs, error_type, error_message,
                               fingerprint, attempts, reason, failed_at)
SELECT 'email_send', 'outage-' || g, 'send_email', '[]'::jsonb,
       jsonb_build_object('to', 'p' || g || '@example.test', 'template', 'low_balance',
                          'context', jsonb_build_object('provider_name', 'Acme', 'balance', '3.00',
                                                        'lead_price', '10.00'),
                          'idempotency_key', 'redrive-' || g),
       'SMTPDataError', '451 4.3.0 Try again later', 'fp-smtp-outage', 5, 'exhausted',
       now() - interval '1 hour' + g * interval '1 millisecond'
FROM generate_series(1, $1::int) AS g
"""


PER_ENTRY = (
    "SELECT retry_of, count(*) AS n FROM dead_letter_queue WHERE retry_of IS NOT NULL GROUP BY retry_of"
)


async def _task(pool: Any, task_id: uuid.UUID) -> dict[str, Any]:
    return dict(await pool.fetchrow("SELECT * FROM redrive_tasks WHERE id = $1", task_id))


async def _create(pool: Any, **kw: Any) -> uuid.UUID:
    spec = TaskSpec(name="e2e", filter=SelectionFilter(queue=EMAIL_SEND, fingerprint="fp-smtp-outage"), **kw)
    return (await create_task(pool, spec, Actor("e2e"))).id


async def _up(redis: Any, queue: str, count: int) -> bool:
    return len([b for b in await read_heartbeats(redis) if b.queue == queue]) >= count


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_provider_recovered_a_task_at_100_per_s_delivers_2000_once_within_the_rate(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, smtp: tuple[int, RecordingSmtp]
) -> None:
    port, server = smtp
    env = _env(database_url, redis_url, port)
    await clean_db.execute(FAILED_EMAILS, 2000)
    procs = [Proc(["worker", EMAIL_SEND], env).start(), Proc(["worker", SCHEDULER], env).start()]
    try:
        await _wait_for(lambda: _up(redis, EMAIL_SEND, 1), 60, "the email worker", *procs)
        await _wait_for(lambda: _up(redis, SCHEDULER, 1), 60, "the scheduler", *procs)
        task_id = await _create(clean_db, rate_per_second=100, max_in_flight=50)

        async def finished() -> bool:
            return (await _task(clean_db, task_id))["state"] in ("completed", "tripped")

        await _wait_for(finished, 90, "the task to finish", *procs)
        task = await _task(clean_db, task_id)
        assert (task["state"], task["sent"], task["succeeded"], task["failed_again"]) == (
            "completed",
            2000,
            2000,
            0,
        )
        delivered = server.delivered()
        assert len(delivered) == 2000 and set(delivered.values()) == {1}  # each exactly once
        times = [t for _, t, reply in server.attempts if reply == "250"]
        span = max(times) - min(times)
        per_1s, per_5s = _max_in_window(times, 1.0), _max_in_window(times, 5.0)
        print(f"2000 delivered over {span:.1f} s ({1999 / span:.1f}/s); max {per_1s} in 1 s, {per_5s} in 5 s")
        assert span >= 1999 / 100 - 1.0  # never faster than the rate on the whole
        assert per_1s <= 100 + 50 and per_5s <= 500 + 50
        assert (
            await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE resolved_at IS NULL") == 0
        )
        assert (
            await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE retry_of IS NOT NULL") == 0
        )
    finally:
        for proc in procs:
            proc.stop()


async def test_provider_still_failing_the_task_trips_and_sends_nothing_more(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, smtp: tuple[int, RecordingSmtp]
) -> None:
    port, server = smtp
    server.down = True
    env = _env(database_url, redis_url, port)
    await clean_db.execute(FAILED_EMAILS, 500)
    procs = [Proc(["worker", EMAIL_SEND], env).start(), Proc(["worker", SCHEDULER], env).start()]
    try:
        await _wait_for(lambda: _up(redis, EMAIL_SEND, 1), 60, "the email worker", *procs)
        await _wait_for(lambda: _up(redis, SCHEDULER, 1), 60, "the scheduler", *procs)
        task_id = await _create(clean_db, rate_per_second=100, max_in_flight=20)

        async def tripped() -> bool:
            return (await _task(clean_db, task_id))["state"] == "tripped"

        await _wait_for(tripped, 60, "the breaker to trip", *procs)
        first = await _task(clean_db, task_id)
        await asyncio.sleep(3.0)
        later = await _task(clean_db, task_id)
        assert later["sent"] == first["sent"] <= 20 + 20, (first, later)  # N outcomes + in flight
        assert "failed again" in later["state_reason"]
        assert len(server.attempts) == later["sent"]  # nothing more reached the provider
        per_entry = await clean_db.fetch(PER_ENTRY)
        assert len(per_entry) == later["sent"] and {r["n"] for r in per_entry} == {1}
        assert await clean_db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'redrive.tripped'") == 1
        print(f"tripped after {later['sent']} sent: {later['state_reason']}")
    finally:
        for proc in procs:
            proc.stop()


async def test_kill_9_of_the_executor_another_takes_the_lease_and_each_entry_is_redriven_once(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, smtp: tuple[int, RecordingSmtp]
) -> None:
    port, server = smtp
    server.down = True  # every retry fails again: one DLQ row per redriven entry, counted by retry_of
    env = _env(database_url, redis_url, port)
    await clean_db.execute(FAILED_EMAILS, 1000)
    worker = Proc(["worker", EMAIL_SEND], env).start()
    schedulers = [Proc(["worker", SCHEDULER], env).start() for _ in range(2)]  # two executors race
    try:
        await _wait_for(lambda: _up(redis, EMAIL_SEND, 1), 60, "the email worker", worker)
        await _wait_for(lambda: _up(redis, SCHEDULER, 2), 60, "two schedulers", *schedulers)
        task_id = await _create(clean_db, rate_per_second=100, max_in_flight=50, breaker_min_outcomes=100_000)

        async def some_sent() -> bool:
            return int((await _task(clean_db, task_id))["sent"]) >= 300

        await _wait_for(some_sent, 60, "300 sent", *schedulers)
        owner = str((await _task(clean_db, task_id))["lease_owner"])
        (holder,) = [p for p in schedulers if f"-{p.pid}-" in owner]
        (other,) = [p for p in schedulers if p is not holder]
        holder.signal(signal.SIGKILL)
        holder.wait(timeout=10)
        killed_at = (await _task(clean_db, task_id))["sent"]

        async def finished() -> bool:
            task = await _task(clean_db, task_id)
            return task["state"] == "completed"

        await _wait_for(finished, 90, "the other executor to finish the task", other, worker)
        task = await _task(clean_db, task_id)
        assert f"-{other.pid}-" in str(task["lease_owner"] or "") or task["lease_owner"] is None
        assert task["lease_epoch"] == 2  # one claim each: the race had one winner, then one takeover
        assert (task["sent"], task["failed_again"]) == (1000, 1000)
        per_entry = await clean_db.fetch(PER_ENTRY)
        assert len(per_entry) == 1000 and {r["n"] for r in per_entry} == {1}
        assert Counter(Counter(k for k, _, _ in server.attempts).values()) == Counter({1: 1000})
        print(f"killed the lease holder at {killed_at} sent; the other finished: 1000 once each")
    finally:
        for proc in [worker, *schedulers]:
            proc.stop()

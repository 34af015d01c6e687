"""Actions on live jobs against real ``fmhl-ops worker email_send`` processes.

* cancel racing two workers that are taking the same jobs: every job either ran once (its outbox
  row) or was cancelled (its ``cancelled`` DLQ row), never both, never neither;
* abort of a job a worker process is running: the worker cancels it and records ``aborted``
  (resolved), nothing is captured as a failure, the worker keeps working.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.controls.actions import abort_job, cancel_job
from shared.controls.live import list_live_jobs
from shared.infra.errors import Conflict, NotFound
from shared.jobs.queues import EMAIL_SEND
from tests.e2e.test_queue_pause_processes import _enqueue, _wait_for, _workers_up
from tests.procs import Proc, base_env
from tests.smtp import RecordingSmtp, smtp_env


async def test_cancel_racing_two_workers_leaves_each_job_run_once_or_cancelled_once(
    database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    env = base_env(DATABASE_URL=database_url, REDIS_URL=redis_url, EMAIL_BACKEND="log", WORKER_MAX_JOBS="5")
    workers = [Proc(["worker", EMAIL_SEND], env).start() for _ in range(2)]
    try:
        await _wait_for(lambda: _workers_up(redis, 2), 60, "two workers' heartbeats", *workers)
        keys = [f"race-{n}" for n in range(200)]
        await _enqueue(redis, keys)
        ids = [m.decode() for m in await redis.zrange(EMAIL_SEND, 0, -1)]

        async def cancel(job_id: str) -> str:
            async with clean_db.acquire() as conn:
                try:
                    await cancel_job(conn, redis, queue=EMAIL_SEND, job_id=job_id, actor="e2e", reason="race")
                except Conflict as exc:
                    return exc.code
                except NotFound:
                    return "finished"
            return "cancelled"

        outcomes = await asyncio.gather(*(cancel(job_id) for job_id in reversed(ids)))

        async def drained() -> bool:
            return await redis.zcard(EMAIL_SEND) == 0

        await _wait_for(drained, 60, "the queue to drain", *workers)
        await asyncio.sleep(1.0)
        ran = {r["idempotency_key"] for r in await clean_db.fetch("SELECT idempotency_key FROM email_outbox")}
        rows = await clean_db.fetch("SELECT job_id, reason, kwargs FROM dead_letter_queue")
        cancelled = {r["kwargs"]["idempotency_key"] for r in rows if r["reason"] == "cancelled"}
        assert {r["reason"] for r in rows} <= {"cancelled"}, rows  # no 'expired' from the race
        assert ran & cancelled == set(), "a job both ran and was cancelled"
        assert ran | cancelled == set(keys), "a job vanished without a trace"
        assert outcomes.count("cancelled") == len(cancelled)
        print(f"outcomes: {sorted((o, outcomes.count(o)) for o in set(outcomes))}; ran {len(ran)}")
    finally:
        for proc in workers:
            assert proc.stop() == 0, proc.output()[-2000:]


async def test_abort_of_a_job_running_in_a_worker_process_is_recorded_not_captured(
    database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    server = RecordingSmtp(delay=30.0)  # the provider hangs: the job runs until aborted
    from aiosmtpd.controller import Controller

    from cli.embedded import free_port

    port = free_port()
    controller = Controller(server, hostname="127.0.0.1", port=port)
    controller.start()
    worker = Proc(
        ["worker", EMAIL_SEND], smtp_env(database_url, redis_url, port, SMTP_TIMEOUT_SECONDS="60")
    ).start()
    try:
        await _wait_for(lambda: _workers_up(redis, 1), 60, "the worker's heartbeat", worker)
        await _enqueue(redis, ["hung-1"])

        async def running() -> bool:
            return len((await list_live_jobs(redis, queue=EMAIL_SEND, state="running")).items) == 1

        await _wait_for(running, 30, "the job to show as running", worker)
        (item,) = (await list_live_jobs(redis, queue=EMAIL_SEND, state="running")).items
        assert item.worker_id is not None and item.started_at is not None
        requested = time.monotonic()
        async with clean_db.acquire() as conn:
            await abort_job(
                conn, redis, queue=EMAIL_SEND, job_id=item.job_id, actor="e2e", reason="hung SMTP"
            )

        async def recorded() -> bool:
            return bool(await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue"))

        await _wait_for(recorded, 15, "the aborted record", worker)
        took = time.monotonic() - requested
        row = await clean_db.fetchrow("SELECT * FROM dead_letter_queue")
        assert (row["reason"], row["error_type"], row["resolved_by"]) == ("aborted", "JobAborted", "e2e")
        assert row["resolved_at"] is not None and row["kwargs"]["idempotency_key"] == "hung-1"
        await _wait_for(lambda: _zero(redis), 10, "the job to leave the queue", worker)
        await asyncio.sleep(0.5)
        assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 1
        assert worker.running()
        print(f"aborted and recorded {took:.2f} s after the request")
    finally:
        # smtplib runs in a thread the abort cannot interrupt (it only cancels the task): closing
        # the server ends it, else the process would wait for it at exit
        controller.stop()
        assert worker.stop() == 0, worker.output()[-2000:]


async def _zero(redis: Any) -> bool:
    return bool(await redis.zcard(EMAIL_SEND) == 0)

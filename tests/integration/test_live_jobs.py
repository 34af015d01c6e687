"""Live jobs by state (``shared.controls.live``) and the actions on one job
(``shared.controls.actions``), over real Redis and Postgres, with a real in-process ``FmhlWorker``
where a worker is part of the story (running, retrying, abort)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.controls.actions import abort_job, bulk_cancel, cancel_job, run_job_now
from shared.controls.live import get_live_job, list_live_jobs
from shared.infra.config import Settings
from shared.infra.errors import Conflict, Invalid, NotFound
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import Heartbeat, write_heartbeat
from shared.jobs.queues import DISTRIBUTE_LEAD, EMAIL_SEND
from shared.jobs.retry_trace import LAST_ERROR_MESSAGE_CHARS, record_retry
from tests.worker_support import job, worker_running

QUEUE = EMAIL_SEND


async def _dlq(pool: Any) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM dead_letter_queue ORDER BY failed_at")
    return [dict(row) for row in rows]


async def _audit(pool: Any, action: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM audit_log WHERE action = $1 ORDER BY id", action)
    return [dict(row) for row in rows]


async def _fake_running(redis: Any, job_id: str, worker_id: str = "w-1") -> float:
    """A job a worker took: arq's in-progress flag plus the worker's heartbeat listing it."""
    started = time.time() - 3
    await redis.set(f"arq:in-progress:{job_id}", b"1", px=60_000)
    await redis.set(f"arq:retry:{job_id}", 1)
    await write_heartbeat(redis, Heartbeat(QUEUE, worker_id, "host-a", 1, time.time(), ((job_id, started),)))
    return started


async def _call(pool: Any, use_case: Any, **kwargs: Any) -> Any:
    async with pool.acquire() as conn:
        try:
            return await use_case(conn, **kwargs)
        except (Conflict, NotFound) as exc:
            return exc


async def test_each_state_lists_its_jobs_with_preview_times_and_correlation(
    redis: Any, clean_db: Any
) -> None:
    queued = [
        await enqueue(redis, "send_email", correlation_id=f"c-{n}", to=f"u{n}@x.test") for n in range(3)
    ]
    scheduled = await enqueue(redis, "send_email", defer_by_seconds=600, to="later@x.test")
    running = await enqueue(redis, "send_email", to="busy@x.test")
    assert running is not None
    started = await _fake_running(redis, running)
    page = await list_live_jobs(redis, queue=QUEUE, state="queued")
    assert sorted(item.job_id for item in page.items) == sorted(queued) and page.next_cursor is None
    first = next(item for item in page.items if item.job_id == queued[0])
    assert (first.state, first.function, first.correlation_id, first.tries) == (
        "queued",
        "send_email",
        "c-0",
        0,
    )
    assert first.args_preview == '{"args":[],"kwargs":{"to":"u0@x.test"}}'  # reserved kwargs hidden
    assert first.enqueued_at is not None and first.enqueued_at <= datetime.now(UTC)
    assert first.max_tries == 6  # the catalogue's policy for send_email

    (item,) = (await list_live_jobs(redis, queue=QUEUE, state="scheduled")).items
    assert item.job_id == scheduled and item.next_attempt_at is not None
    assert 590 < (item.next_attempt_at - datetime.now(UTC)).total_seconds() <= 600

    (busy,) = (await list_live_jobs(redis, queue=QUEUE, state="running")).items
    assert (busy.job_id, busy.worker_id, busy.tries) == (running, "w-1", 1)
    assert busy.started_at is not None and abs(busy.started_at.timestamp() - started) < 0.01
    assert (await list_live_jobs(redis, queue=QUEUE, state="retrying")).items == ()
    assert (await list_live_jobs(redis, queue=DISTRIBUTE_LEAD, state="queued")).items == ()

    detail = await get_live_job(redis, queue=QUEUE, job_id=running)
    assert detail.state == "running" and detail.worker_id == "w-1"
    with pytest.raises(NotFound):
        await get_live_job(redis, queue=QUEUE, job_id="nope")
    with pytest.raises(NotFound):
        await get_live_job(redis, queue=DISTRIBUTE_LEAD, job_id=running)  # not in that queue


async def test_keyset_pages_skip_running_jobs_and_never_repeat_or_skip(redis: Any) -> None:
    ids = [await enqueue(redis, "send_email", to=f"u{n}@x.test") for n in range(130)]
    for job_id in ids[:7]:  # the head of the queue is running: not "queued"
        assert job_id is not None
        await _fake_running(redis, job_id, worker_id=f"w-{job_id}")
    order = [m.decode() for m in await redis.zrange(QUEUE, 0, -1)]  # (score, id): ties by id
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await list_live_jobs(redis, queue=QUEUE, state="queued", cursor=cursor, limit=50)
        seen += [item.job_id for item in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        if pages == 1:  # a job of the next page finishes between two requests: nothing skipped
            await redis.zrem(QUEUE, ids[60])
    expected = [job_id for job_id in order if job_id not in ids[:7] and job_id != ids[60]]
    assert seen == expected and pages == 3
    running = await list_live_jobs(redis, queue=QUEUE, state="running", limit=5)
    assert len(running.items) == 5 and running.next_cursor is not None
    rest = await list_live_jobs(redis, queue=QUEUE, state="running", limit=5, cursor=running.next_cursor)
    assert {i.job_id for i in running.items + rest.items} == set(ids[:7]) and rest.next_cursor is None


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"queue": "scheduler", "state": "queued"}, "unknown_queue"),
        ({"queue": QUEUE, "state": "done"}, "invalid_state"),
        ({"queue": QUEUE, "state": "queued", "limit": 0}, "invalid_limit"),
        ({"queue": QUEUE, "state": "queued", "cursor": "%%%not-ours"}, "invalid_cursor"),
        ({"queue": QUEUE, "state": "queued", "cursor": "WzEsMl0"}, "invalid_cursor"),  # [1,2]
    ],
)
async def test_bad_listing_input_is_invalid(redis: Any, kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(Invalid) as refused:
        await list_live_jobs(redis, **kwargs)
    assert refused.value.code == code


async def test_cancel_removes_records_and_audits_exactly_once(redis: Any, clean_db: Any) -> None:
    job_id = await enqueue(redis, "send_email", defer_by_seconds=300, correlation_id="corr-1", to="a@x.test")
    results = await asyncio.gather(
        *(
            _call(
                clean_db,
                cancel_job,
                redis=redis,
                queue=QUEUE,
                job_id=job_id,
                actor=f"admin-{n}",
                reason="dup",
            )
            for n in range(3)
        )
    )
    wins = [r for r in results if not isinstance(r, Exception)]
    losses = [r for r in results if isinstance(r, Exception)]
    assert len(wins) == 1 and all(isinstance(r, Conflict) and r.code == "already_ended" for r in losses)
    assert await redis.zscore(QUEUE, job_id) is None and not await redis.exists(f"arq:job:{job_id}")
    (row,) = await _dlq(clean_db)
    assert (row["job_id"], row["reason"], row["function"], row["correlation_id"]) == (
        job_id,
        "cancelled",
        "send_email",
        "corr-1",
    )
    assert row["kwargs"] == {"to": "a@x.test"} and row["resolved_at"] is not None
    assert (
        row["resolution"] == "manual" and row["resolved_by"] == wins[0].by and row["resolution_note"] == "dup"
    )
    assert str(row["id"]) == wins[0].dlq_id
    audit = await _audit(clean_db, "job.cancel")
    assert len(audit) == 1 and audit[0]["target_id"] == f"{QUEUE}:{job_id}"  # refused calls rolled back
    # the resolved record does not count as open DLQ work
    assert await clean_db.fetchval("SELECT coalesce(sum(unresolved_count), 0) FROM dlq_groups") == 0

    with pytest.raises(NotFound):
        async with clean_db.acquire() as conn:
            await cancel_job(conn, redis, queue=QUEUE, job_id="never-was", actor="admin")


async def test_cancel_of_a_running_job_is_refused_and_abort_of_a_waiting_one_too(
    redis: Any, clean_db: Any
) -> None:
    running = await enqueue(redis, "send_email", to="a@x.test")
    waiting = await enqueue(redis, "send_email", to="b@x.test")
    assert running is not None and waiting is not None
    await _fake_running(redis, running)
    async with clean_db.acquire() as conn:
        with pytest.raises(Conflict) as busy:
            await cancel_job(conn, redis, queue=QUEUE, job_id=running, actor="admin")
        assert busy.value.code == "job_running"
        with pytest.raises(Conflict) as idle:
            await abort_job(conn, redis, queue=QUEUE, job_id=waiting, actor="admin")
        assert idle.value.code == "job_not_running"
    assert await redis.zcard(QUEUE) == 2 and await _dlq(clean_db) == []
    assert await _audit(clean_db, "job.cancel") == [] and await _audit(clean_db, "job.abort") == []


async def test_run_now_makes_a_scheduled_job_due_once(redis: Any, clean_db: Any) -> None:
    job_id = await enqueue(redis, "send_email", defer_by_seconds=3600, to="a@x.test")
    results = await asyncio.gather(
        *(
            _call(clean_db, run_job_now, redis=redis, queue=QUEUE, job_id=job_id, actor=f"a-{n}")
            for n in range(3)
        )
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert {r.code for r in results if isinstance(r, Exception)} == {"already_due"}
    assert await redis.zscore(QUEUE, job_id) <= time.time() * 1000
    (item,) = (await list_live_jobs(redis, queue=QUEUE, state="queued")).items
    assert item.job_id == job_id
    assert len(await _audit(clean_db, "job.run_now")) == 1


async def test_bulk_cancel_takes_one_function_each_recorded(redis: Any, clean_db: Any) -> None:
    doomed = [await enqueue(redis, "send_email", queue=QUEUE, to=f"u{n}@x.test") for n in range(30)]
    kept = [await enqueue(redis, "other_mail", queue=QUEUE, n=n) for n in range(10)]
    async with clean_db.acquire() as conn:
        with pytest.raises(Invalid):
            await bulk_cancel(conn, redis, queue=QUEUE, function="send_email", actor="admin", reason=" ")
        result = await bulk_cancel(
            conn, redis, queue=QUEUE, function="send_email", actor="admin", reason="spam"
        )
    assert result.cancelled == 30 and sorted(result.job_ids) == sorted(doomed)
    assert sorted(m.decode() for m in await redis.zrange(QUEUE, 0, -1)) == sorted(kept)
    rows = await _dlq(clean_db)
    assert len(rows) == 30 and {r["reason"] for r in rows} == {"cancelled"}
    (audit,) = await _audit(clean_db, "job.bulk_cancel")
    assert audit["metadata"]["cancelled"] == 30 and audit["metadata"]["function"] == "send_email"


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_a_real_worker_shows_running_and_retrying_and_an_abort_is_recorded_not_captured(
    settings: Settings, redis: Any, clean_db: Any
) -> None:
    release = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(ctx: dict[str, Any], n: int) -> None:
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def flaky(ctx: dict[str, Any]) -> None:
        raise ConnectionError("smtp.example.test:25 refused")

    functions = [
        job(QUEUE, "hang", hang, timeout_seconds=60),
        job(QUEUE, "flaky", flaky, max_tries=4, backoff_base_seconds=60, jitter_ratio=0),
    ]
    hung = await enqueue(redis, "hang", queue=QUEUE, correlation_id="corr-hang", n=1)
    retried = await enqueue(redis, "flaky", queue=QUEUE)
    async with worker_running(QUEUE, settings, clean_db, redis, functions) as worker:

        async def listed_running() -> bool:
            return len((await list_live_jobs(redis, queue=QUEUE, state="running")).items) == 1

        async def listed_retrying() -> bool:
            return len((await list_live_jobs(redis, queue=QUEUE, state="retrying")).items) == 1

        await _until(listed_running)
        await _until(listed_retrying)
        (running,) = (await list_live_jobs(redis, queue=QUEUE, state="running")).items
        assert (running.job_id, running.worker_id, running.correlation_id) == (
            hung,
            worker.worker_id,
            "corr-hang",
        )
        (retrying,) = (await list_live_jobs(redis, queue=QUEUE, state="retrying")).items
        assert (retrying.job_id, retrying.tries, retrying.max_tries) == (retried, 1, 4)
        assert retrying.last_error is not None and retrying.last_error.error_type == "ConnectionError"
        assert "refused" in retrying.last_error.error_message
        assert retrying.next_attempt_at is not None
        assert 50 < (retrying.next_attempt_at - datetime.now(UTC)).total_seconds() <= 60

        # run-now of the retrying job: it is tried again at once (try 2)
        async with clean_db.acquire() as conn:
            await run_job_now(conn, redis, queue=QUEUE, job_id=retried, actor="admin")

        async def second_try() -> bool:
            items = (await list_live_jobs(redis, queue=QUEUE, state="retrying")).items
            return bool(items) and items[0].tries == 2

        await _until(second_try)

        results = await asyncio.gather(
            *(
                _call(
                    clean_db, abort_job, redis=redis, queue=QUEUE, job_id=hung, actor=f"a-{n}", reason="stuck"
                )
                for n in range(2)
            )
        )
        assert sum(not isinstance(r, Exception) for r in results) == 1
        assert {r.code for r in results if isinstance(r, Exception)} <= {
            "already_aborting",
            "job_not_running",
        }
        await asyncio.wait_for(cancelled.wait(), 5)

        async def recorded() -> bool:
            return await redis.zscore(QUEUE, hung) is None and len(await _dlq(clean_db)) == 1

        await _until(recorded)
    (row,) = await _dlq(clean_db)
    assert (row["job_id"], row["reason"], row["error_type"], row["correlation_id"]) == (
        hung,
        "aborted",
        "JobAborted",
        "corr-hang",
    )
    assert row["resolved_at"] is not None and row["resolution_note"] == "stuck"
    assert row["kwargs"] == {"n": 1} and row["attempts"] == 1
    assert not await redis.exists(f"fmhl:job:cancelled:{hung}")  # not taken for a lost try
    assert len(await _audit(clean_db, "job.abort")) == 1


async def test_retry_trace_is_bounded_survives_hostile_text_and_stale_entries_are_pruned(redis: Any) -> None:
    job_id = await enqueue(redis, "send_email", defer_by_seconds=30, to="a@x.test")
    assert job_id is not None
    await redis.set(f"arq:retry:{job_id}", 1)
    hostile = "refused \x00 \ud800 " + "y" * 100_000
    await record_retry(
        redis, queue=QUEUE, job_id=job_id, job_try=1, max_tries=6, delay_seconds=30,
        error_type="Weird\ud800Error", error_message=hostile,
    )  # fmt: skip
    await record_retry(  # a job that has finished since: its index entry must not show
        redis, queue=QUEUE, job_id="gone", job_try=1, max_tries=6, delay_seconds=30,
        error_type="ConnectionError", error_message="x",
    )  # fmt: skip
    await record_retry(None, queue=QUEUE, job_id="x", job_try=1, max_tries=2, delay_seconds=1,
                       error_type="E", error_message="no redis: a no-op")  # fmt: skip
    (item,) = (await list_live_jobs(redis, queue=QUEUE, state="retrying")).items
    assert item.job_id == job_id and item.last_error is not None
    assert item.last_error.error_message.startswith("refused \x00 \\ud800 ")
    assert len(item.last_error.error_message) <= LAST_ERROR_MESSAGE_CHARS + 1
    assert [m.decode() for m in await redis.zrange(f"fmhl:retrying:{QUEUE}", 0, -1)] == [job_id]  # pruned

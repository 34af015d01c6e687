"""Claiming a job in one Redis round trip (``worker.job_claim``), against real Redis and arq."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix

from shared.infra.config import Settings
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from tests.worker_support import job, run_burst
from worker.job_claim import JobClaimer

QUEUE = EMAIL_SEND


async def _queue(redis: Any, job_id: str, score_ms: int) -> None:
    await redis.zadd(QUEUE, {job_id: score_ms})


async def test_a_due_job_is_claimed_once_with_arqs_in_progress_key(redis: Any) -> None:
    now = int(time.time() * 1000)
    await _queue(redis, "due-1", now - 5)
    claimer = JobClaimer(redis, QUEUE, in_progress_ttl_ms=40_000)
    assert await claimer.claim("due-1", now) == now - 5
    assert await redis.get(in_progress_key_prefix + "due-1") == b"1"
    assert 39_000 < await redis.pttl(in_progress_key_prefix + "due-1") <= 40_000
    assert await claimer.claim("due-1", now) is None, "held: a second claim (any worker) skips it"


async def test_deferred_finished_and_foreign_jobs_are_not_claimed(redis: Any) -> None:
    now = int(time.time() * 1000)
    claimer = JobClaimer(redis, QUEUE, in_progress_ttl_ms=40_000)
    await _queue(redis, "later-1", now + 60_000)
    assert await claimer.claim("later-1", now) is None, "deferred: not due yet"
    assert not await redis.exists(in_progress_key_prefix + "later-1"), "a skipped job holds no lock"
    assert await claimer.claim("gone-1", now) is None, "finished: no longer queued"
    assert not await redis.exists(in_progress_key_prefix + "gone-1")
    await _queue(redis, "theirs-1", now - 5)
    await redis.psetex(in_progress_key_prefix + "theirs-1", 40_000, b"1")  # claimed by arq's WATCH/MULTI
    assert await claimer.claim("theirs-1", now) is None


async def test_concurrent_claims_of_one_job_have_one_winner(redis: Any) -> None:
    now = int(time.time() * 1000)
    await _queue(redis, "race-1", now - 5)
    claimers = [JobClaimer(redis, QUEUE, in_progress_ttl_ms=40_000) for _ in range(20)]
    outcomes = await asyncio.gather(*(c.claim("race-1", now) for c in claimers))
    assert sum(o is not None for o in outcomes) == 1


async def _command_calls(redis: Any) -> Counter[str]:
    stats = await redis.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


async def test_the_worker_claims_each_job_in_one_round_trip_and_runs_it_once(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """arq's claim sent WATCH, EXISTS, ZSCORE and MULTI/PSETEX/EXEC per job; ours one EVALSHA per
    batch of free slots, and jobs that end together share one MULTI/EXEC (``worker.job_finish``)."""
    runs: Counter[int] = Counter()

    async def count(ctx: dict[str, Any], n: int) -> None:
        runs[n] += 1

    for n in range(200):
        await enqueue(redis, "count", queue=QUEUE, n=n)
    before = await _command_calls(redis)
    worker = await run_burst(QUEUE, settings, clean_db, redis, [job(QUEUE, "count", count)], max_jobs=20)
    calls = await _command_calls(redis)
    calls.subtract(before)
    assert runs == Counter(range(200)), "every job ran exactly once"
    assert worker.jobs_complete == 200
    assert calls["watch"] == 0, calls
    assert 1 <= calls["evalsha"] + calls["eval"] < 200, calls
    assert 200 <= calls["exists"] < 220, "each job checked once, inside the script (+ pause checks)"
    assert worker.finish_transactions < 200 and calls["exec"] < 2 * 200, calls


async def test_one_call_claims_a_mixed_batch(redis: Any) -> None:
    now = int(time.time() * 1000)
    claimer = JobClaimer(redis, QUEUE, in_progress_ttl_ms=40_000)
    await _queue(redis, "mix-due", now - 5)
    await _queue(redis, "mix-later", now + 60_000)
    await _queue(redis, "mix-held", now - 5)
    await redis.psetex(in_progress_key_prefix + "mix-held", 40_000, b"1")
    ids = ["mix-due", "mix-later", "mix-held", "mix-gone"]
    assert await claimer.claim_many(ids, now) == [now - 5, None, None, None]
    assert [bool(await redis.exists(in_progress_key_prefix + i)) for i in ids] == [True, False, True, False]


async def test_our_workers_and_plain_arq_workers_share_a_queue_each_job_once(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """The script and arq's WATCH/MULTI guard the same in-progress key: mixed workers never run
    a job twice (a rolling deploy from plain arq to ours would mix them)."""
    from arq.worker import Worker, func

    from shared.infra.redis import deserialize_job, serialize_job

    runs: Counter[int] = Counter()

    async def count(ctx: dict[str, Any], n: int) -> None:
        runs[n] += 1
        await asyncio.sleep(0.001)

    for n in range(300):
        await enqueue(redis, "count", queue=QUEUE, n=n)
    plain = Worker(
        functions=[func(count, name="count")],
        queue_name=QUEUE,
        redis_pool=redis,
        burst=True,
        poll_delay=0,
        max_jobs=20,
        handle_signals=False,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
    )
    ours = run_burst(QUEUE, settings, clean_db, redis, [job(QUEUE, "count", count)], max_jobs=20)
    await asyncio.gather(plain.main(), ours)
    assert runs == Counter(range(300)), {n: c for n, c in runs.items() if c != 1}
    assert plain.jobs_complete > 0, "both kinds took jobs"


@pytest.mark.serial  # 200 jobs must finish in under 3 s
async def test_a_full_worker_keeps_starting_jobs_within_one_poll(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """With every slot taken the walk waits for a job to end, as arq's does, rather than going
    back to the poll delay (claiming all free slots at once first made no-op jobs run at
    ``max_jobs`` per poll delay: 0.70x of bare arq in ``make bench``'s overhead case)."""

    async def noop(ctx: dict[str, Any], n: int) -> None:
        await asyncio.sleep(0.001)

    for n in range(200):
        await enqueue(redis, "noop", queue=QUEUE, n=n)
    started = time.perf_counter()
    worker = await run_burst(
        QUEUE, settings, clean_db, redis, [job(QUEUE, "noop", noop)], max_jobs=20, poll_delay=0.5
    )
    elapsed = time.perf_counter() - started
    assert worker.jobs_complete == 200
    assert elapsed < 3.0, f"{elapsed:.1f} s: 20 jobs per 0.5 s poll would take 5 s"


async def test_a_walk_starts_nothing_once_picking_stopped(settings: Settings, redis: Any) -> None:
    """A walk can outlast a SIGTERM (arq sets ``allow_pick_jobs = False``): each claim asks first."""
    from worker.fmhl_worker import build_worker

    async def noop(ctx: dict[str, Any], n: int) -> None:
        return None

    ids = [await enqueue(redis, "noop", queue=QUEUE, n=n) for n in range(5)]
    worker = build_worker(
        QUEUE, settings, functions=[job(QUEUE, "noop", noop)], redis=redis, handle_signals=False
    )
    worker.allow_pick_jobs = False
    await worker.start_jobs([job_id.encode() for job_id in ids])
    assert worker.tasks == {} and worker.job_counter == 0
    assert not await redis.exists(*(in_progress_key_prefix + job_id for job_id in ids))

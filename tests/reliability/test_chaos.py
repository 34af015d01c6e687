"""Chaos: nothing lost. Four real workers over the three queues take 3,000 jobs (a known third
failing permanently, a known third failing transiently twice, a third succeeding) while a random
worker is SIGKILLed and restarted every few seconds for 60 s, and Redis and Postgres (servers
this test owns) are each restarted once. After the drain, every job is accounted for exactly once:
completed, or in the DLQ with a reason; balances equal ledger sums.

Real jobs, real failures: ``distribute_lead`` of a seeded lead (ok) or of an unknown lead
(``NotFound``: permanent); ``export_report`` likewise; ``send_email`` through a local SMTP server
to which ``flaky-*`` messages are deferred twice with 451 (transient, retried), an unknown
template (permanent) or a plain message (ok).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest

from shared.infra.db import init_connection
from shared.infra.redis import (
    DLQ_SPOOL_INFLIGHT_KEY,
    DLQ_SPOOL_KEY,
    DLQ_SPOOL_REJECTED_KEY,
    create_redis,
)
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT
from tests.factories import create_lead, create_provider, create_report_export
from tests.procs import Proc
from tests.reliability.support import (
    OwnServers,
    WorkerFleet,
    flaky_smtp,
    own_servers,
    percentile,
    summary,
    wait_until,
    worker_env,
)

# serial: kills and restarts a fleet under load; CPU-heavy, its own timeouts assume a quiet machine
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

CHAOS_SECONDS = 60.0
ENQUEUE_SECONDS = 55.0
KILL_EVERY_SECONDS = (3.0, 5.0)
REDIS_RESTART_AT = 20.0
POSTGRES_RESTART_AT = 40.0
DRAIN_TIMEOUT_SECONDS = 150.0
FLEET = [DISTRIBUTE_LEAD, EMAIL_SEND, EMAIL_SEND, REPORT_EXPORT]
QUEUES = (DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT)
# DLQ reasons that say a try vanished with its worker (SIGKILL): the job is captured without a
# further run, so when the killed try had already committed its work (killed between its COMMIT and
# arq's acknowledgement) the job is both completed and in the DLQ. Nothing can know that the killed
# try got that far; every other reason beside a completed job is a duplicate.
VANISHED_REASONS = frozenset({"poison", "worker_lost"})
# Short job timeouts keep arq's in-progress lock of a killed job (timeout + 15 s) and the backoff
# short enough to drain in time; the tries are the catalogue's.
POLICIES = {
    name: {"timeout_seconds": 5, "backoff_base_seconds": 0.5, "backoff_max_seconds": 2}
    for name in ("distribute_lead", "refund_bad_lead", "send_email", "export_report")
}


@dataclass(frozen=True)
class PlannedJob:
    job_id: str
    function: str
    kind: str  # ok | permanent | transient
    key: str  # what proves completion: lead id, export id or idempotency key
    kwargs: dict[str, Any]


async def _seed(servers: OwnServers, rng: random.Random) -> list[PlannedJob]:
    conn = await asyncpg.connect(servers.database_url)
    await init_connection(conn)
    try:
        providers = [
            await create_provider(conn, balance=Decimal(rng.choice([5000, 20000])), lead_price=Decimal(1))
            for _ in range(8)
        ]
        leads = [await create_lead(conn) for _ in range(400)]
        exports = [await create_report_export(conn, rng.choice(providers)) for _ in range(100)]
    finally:
        await conn.close()
    jobs = [
        PlannedJob(f"chaos-lead-ok-{i}", "distribute_lead", "ok", str(lead), {"lead_id": str(lead)})
        for i, lead in enumerate(leads)
    ]
    jobs += [
        PlannedJob(
            f"chaos-lead-missing-{i}", "distribute_lead", "permanent", "", {"lead_id": str(uuid.uuid4())}
        )
        for i in range(400)
    ]
    jobs += [
        PlannedJob(f"chaos-export-ok-{i}", "export_report", "ok", str(e), {"export_id": str(e)})
        for i, e in enumerate(exports)
    ]
    jobs += [
        PlannedJob(
            f"chaos-export-missing-{i}", "export_report", "permanent", "", {"export_id": str(uuid.uuid4())}
        )
        for i in range(100)
    ]

    def mail(i: int, kind: str, key: str, template: str) -> PlannedJob:
        context = {"provider_name": "Acme", "balance": "3.00", "lead_price": "10.00"}
        kwargs = {
            "to": f"p{i}@example.test",
            "template": template,
            "context": context,
            "idempotency_key": key,
        }
        return PlannedJob(f"chaos-{key}", "send_email", kind, key, kwargs)

    jobs += [mail(i, "ok", f"ok-{i}", "low_balance") for i in range(500)]
    jobs += [mail(i, "permanent", f"bad-{i}", "no_such_template") for i in range(500)]
    jobs += [mail(i, "transient", f"flaky-{i}", "low_balance") for i in range(1000)]
    rng.shuffle(jobs)
    return jobs


@dataclass
class ChaosCounts:
    enqueued: int = 0
    enqueue_retries: int = 0
    redis_restarts: int = 0
    postgres_restarts: int = 0
    # jobs whose first enqueue call answered "that id exists already": each id is new, so the job
    # was not written (arq's WATCH-based enqueue said so of an enqueue a Redis restart cut)
    exists_on_first_call: list[str] = field(default_factory=list)


async def _enqueue_all(redis: Any, jobs: list[PlannedJob], counts: ChaosCounts) -> None:
    """Enqueue at an even pace over ``ENQUEUE_SECONDS``; a call that fails (Redis restarting) is
    retried with the same job id, which ``enqueue`` de-duplicates: "exists already" (``None``)
    is then the answer when the failed call had written the job, and never to a first call."""
    batch = 25
    pause = ENQUEUE_SECONDS / (len(jobs) / batch)
    for start in range(0, len(jobs), batch):
        for job in jobs[start : start + batch]:
            first_call = True
            while True:
                try:
                    answer = await enqueue(
                        redis, job.function, job_id=job.job_id, correlation_id=job.job_id, **job.kwargs
                    )
                    break
                except Exception:
                    counts.enqueue_retries += 1
                    first_call = False
                    await asyncio.sleep(0.2)
            if answer is None and first_call:
                counts.exists_on_first_call.append(job.job_id)
            counts.enqueued += 1
        await asyncio.sleep(pause)


async def _chaos(fleet: WorkerFleet, servers: OwnServers, rng: random.Random, counts: ChaosCounts) -> None:
    started = time.monotonic()
    next_kill = started + rng.uniform(*KILL_EVERY_SECONDS)
    while (now := time.monotonic()) - started < CHAOS_SECONDS:
        if now >= next_kill:
            await asyncio.to_thread(fleet.kill_and_restart, rng.randrange(len(fleet.procs)))
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_SECONDS)
        if not counts.redis_restarts and now - started >= REDIS_RESTART_AT:
            await servers.stop_redis()
            await asyncio.sleep(1.0)
            await servers.start_redis()
            counts.redis_restarts += 1
        if not counts.postgres_restarts and now - started >= POSTGRES_RESTART_AT:
            await servers.stop_postgres()
            await asyncio.sleep(1.0)
            await servers.start_postgres()
            counts.postgres_restarts += 1
        assert not fleet.unexpected_exits(), fleet.unexpected_exits()
        await asyncio.sleep(0.2)


async def _all_queues_empty(redis: Any) -> bool:
    """arq removes a job from its queue only when it finished (done or failed for good)."""
    pipe = redis.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.zcard(queue)
    return sum(await pipe.execute()) == 0


async def _stuck(redis: Any, fleet: WorkerFleet, smtp: Any) -> str:
    """What is left in the queues when they do not drain: the jobs, their tries, the workers' lines."""
    lines = []
    for queue in QUEUES:
        left = await redis.zrange(queue, 0, -1, withscores=True)
        lines.append(f"{queue}: {len(left)} left")
        for raw_id, score in left[:3]:
            job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            tries = await redis.get(f"arq:retry:{job_id}")
            running = await redis.exists(f"arq:in-progress:{job_id}")
            due_s = score / 1000 - time.time()
            lines.append(f"  {job_id}: due in {due_s:.1f}s, tries={tries}, in progress={running}")
            lines.append(_trace([job_id], fleet, smtp))
    return "\n".join(lines)


def _completed(job: PlannedJob, done: dict[str, set[str]]) -> bool:
    if job.kind == "permanent":
        return False
    return job.key in done[job.function]


@pytest.mark.timeout(330)
async def test_chaos_nothing_lost_nothing_twice() -> None:
    rng = random.Random(10)
    counts = ChaosCounts()
    async with own_servers() as servers:
        jobs = await _seed(servers, rng)
        with flaky_smtp(failures=2) as (smtp_port, smtp):
            env = worker_env(
                servers,
                EMAIL_BACKEND="smtp",
                SMTP_HOST="127.0.0.1",
                SMTP_PORT=str(smtp_port),
                JOB_POLICIES=orjson.dumps(POLICIES).decode(),
                DB_POOL_MAX_SIZE="20",
            )
            redis = create_redis(servers.redis_url, timeout_seconds=2)
            fleet = WorkerFleet(FLEET, env).start()
            try:
                began = time.monotonic()
                await asyncio.gather(_enqueue_all(redis, jobs, counts), _chaos(fleet, servers, rng, counts))
                chaos_s = time.monotonic() - began
                try:
                    drain_s = await wait_until(
                        lambda: _all_queues_empty(redis), DRAIN_TIMEOUT_SECONDS, "every queue to drain", 0.5
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{await _stuck(redis, fleet, smtp)}") from exc
                assert not fleet.unexpected_exits(), fleet.unexpected_exits()
                spool = Proc(["cron", "run", "drain_dlq_spool"], env).start()
                assert spool.wait(timeout=60) == 0, spool.output()
                print(f"\nchaos: spool drained at the end: {spool.output().strip().splitlines()[-1]}")
                assert await redis.llen(DLQ_SPOOL_KEY) == 0 and await redis.llen(DLQ_SPOOL_INFLIGHT_KEY) == 0
                # a capture parked as "refused" is not a DLQ row: checked after the counts
                rejected = await redis.lrange(DLQ_SPOOL_REJECTED_KEY, 0, -1)
                results = await _arq_results(redis, jobs)
            finally:
                codes = await asyncio.to_thread(fleet.stop)
                await redis.aclose()
            assert codes == [0] * len(FLEET), fleet.output()
        await _verify(servers, jobs, counts, fleet, smtp, results, rejected, chaos_s, drain_s)
        assert not rejected, [entry[:600] for entry in rejected[:5]]


async def _arq_results(redis: Any, jobs: list[PlannedJob]) -> dict[str, dict[str, Any]]:
    pipe = redis.pipeline(transaction=False)
    for job in jobs:
        pipe.get(f"arq:result:{job.job_id}")
    raw = await pipe.execute()
    return {job.job_id: orjson.loads(value) for job, value in zip(jobs, raw, strict=True) if value}


def _arq_outcome(result: dict[str, Any] | None) -> str:
    """arq's result record in one line: try, success, what it returned or raised, run time."""
    if result is None:
        return "none (never finished, or its result expired)"
    ran = (result.get("ft") or 0) - (result.get("st") or 0)
    return (
        f"try={result.get('t')} success={result.get('s')} ran={ran / 1000:.2f}s "
        f"result={orjson.dumps(result.get('r'), default=str).decode()[:300]}"
    )


async def _done_keys(conn: Any) -> dict[str, set[str]]:
    leads = await conn.fetch("SELECT id::text FROM leads WHERE status <> 'new'")
    exports = await conn.fetch("SELECT id::text FROM report_exports WHERE status = 'done'")
    sent = await conn.fetch("SELECT idempotency_key FROM email_outbox WHERE status = 'sent'")
    return {
        "distribute_lead": {r[0] for r in leads},
        "export_report": {r[0] for r in exports},
        "send_email": {r[0] for r in sent},
    }


async def _verify(
    servers: OwnServers,
    jobs: list[PlannedJob],
    counts: ChaosCounts,
    fleet: WorkerFleet,
    smtp: Any,
    results: dict[str, dict[str, Any]],
    rejected: list[bytes],
    chaos_s: float,
    drain_s: float,
) -> None:
    conn = await asyncpg.connect(servers.database_url)
    try:
        dlq_rows = await conn.fetch(
            "SELECT job_id, function, reason, error_type, error_message FROM dead_letter_queue"
        )
        done = await _done_keys(conn)
        unbalanced = await conn.fetchval(
            """SELECT count(*) FROM providers p
               WHERE p.balance <> (SELECT coalesce(sum(amount), 0) FROM ledger_entries l
                                   WHERE l.provider_id = p.id)"""
        )
        charges = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'")
        assignments = await conn.fetchval("SELECT count(*) FROM lead_assignments")
    finally:
        await conn.close()
    dlq_count = Counter(row["job_id"] for row in dlq_rows)
    dlq_reason = {row["job_id"]: row["reason"] for row in dlq_rows}
    kind_of = {job.job_id: job.kind for job in jobs}
    planned = set(kind_of)
    missing, twice, permanent_not_once, vanished_after_work = [], [], [], []
    completed = captured = 0
    for job in jobs:
        in_dlq = dlq_count[job.job_id]
        if job.kind == "permanent":
            if in_dlq != 1:
                permanent_not_once.append(job.job_id)
            captured += in_dlq
            continue
        finished = _completed(job, done)
        completed += finished
        captured += in_dlq
        if finished and in_dlq == 1 and dlq_reason[job.job_id] in VANISHED_REASONS:
            # at least once: a try killed after its work committed, before arq's acknowledgement,
            # leaves no trace of that; its job is then quarantined or past max_tries unrun
            vanished_after_work.append(job.job_id)
        elif (finished and in_dlq) or in_dlq > 1:
            twice.append(job.job_id)
        elif not finished and not in_dlq:
            missing.append(job.job_id)
    latencies = [
        (r["ft"] - r["et"]) / 1000 for r in results.values() if r.get("s") and r.get("ft") and r.get("et")
    ]
    reasons = Counter(dlq_reason[j] for j in dlq_count if j in planned)
    by_kind = Counter((job.kind, dlq_reason.get(job.job_id, "-")) for job in jobs)
    side_effect_dlq = Counter(row["reason"] for row in dlq_rows if row["job_id"] not in planned)
    resent = sum(1 for n in smtp.delivered.values() if n > 1)
    print(
        f"\nchaos: {chaos_s:.1f}s chaos + {drain_s:.1f}s drain; enqueued={counts.enqueued} "
        f"(retried calls {counts.enqueue_retries}) completed={completed} captured={captured} "
        f"kills={fleet.kills} worker_restarts={fleet.restarts} redis_restarts={counts.redis_restarts} "
        f"postgres_restarts={counts.postgres_restarts}\n"
        f"chaos: missing={len(missing)} duplicates={len(twice)} permanent_not_once={len(permanent_not_once)} "
        f"completed and captured as vanished (poison/worker_lost: a killed try had done the work)="
        f"{len(vanished_after_work)} "
        f"dlq_reasons={dict(reasons)} by_kind={dict(by_kind)}\n"
        f"chaos: side-effect emails in DLQ={dict(side_effect_dlq)}; "
        f"smtp deferred={sum(smtp.deferred.values())} "
        f"delivered={sum(smtp.delivered.values())} (keys delivered more than once, at-least-once: {resent})\n"
        f"chaos: job latency enqueue->finish {summary(latencies)} p90={percentile(latencies, 90):.2f}s\n"
        f"chaos: providers unbalanced={unbalanced}, charges={charges} assignments={assignments}"
    )
    assert counts.enqueued == len(jobs) == 3000
    assert not counts.exists_on_first_call, (
        f"enqueue said 'exists already' of new ids: {counts.exists_on_first_call}"
    )
    assert fleet.kills >= 10 and counts.redis_restarts == 1 and counts.postgres_restarts == 1
    trace = functools.partial(
        _trace, fleet=fleet, smtp=smtp, dlq_rows=dlq_rows, results=results, rejected=rejected
    )
    assert not missing, trace(missing[:5])
    assert not twice, trace(twice[:5])
    assert not permanent_not_once, trace(permanent_not_once[:5])
    assert all(row["reason"] for row in dlq_rows)
    # A transient failure never ends as "permanent" (chaos may exhaust its tries, nothing else).
    misjudged = [
        f"{r['job_id']}: {r['error_type']}: {r['error_message']}"
        for r in dlq_rows
        if r["reason"] == "permanent" and r["job_id"] in planned and kind_of[r["job_id"]] != "permanent"
    ]
    assert not misjudged, misjudged
    assert unbalanced == 0 and charges == assignments


def _trace(
    job_ids: list[str],
    fleet: WorkerFleet,
    smtp: Any,
    dlq_rows: Any = (),
    results: dict[str, dict[str, Any]] | None = None,
    rejected: Sequence[bytes] = (),
) -> str:
    """What is known of each job, to see where it was lost or doubled: its DLQ rows (how many,
    each reason), arq's result record (the last try's number and outcome: a final failure no DLQ
    row explains was lost on its way to the DLQ) and what the workers logged about it."""
    lines = []
    for job_id in job_ids:
        rows = [r for r in dlq_rows if r["job_id"] == job_id]
        lines.append(f"{job_id}: {len(rows)} DLQ row(s)")
        lines.extend(
            f"{job_id}: DLQ {r['reason']}: {r['error_type']}: {r['error_message'][:300]}" for r in rows
        )
        if results is not None:
            lines.append(f"{job_id}: arq result {_arq_outcome(results.get(job_id))}")
        lines.extend(
            f"{job_id}: parked as refused: {entry[:500]!r}" for entry in rejected if job_id.encode() in entry
        )
        key = job_id.removeprefix("chaos-")
        logged = [
            line for p in fleet.procs + fleet.retired for line in p.output().splitlines() if key in line
        ]
        lines.append(f"{job_id}: smtp deferred={smtp.deferred[key]} delivered={smtp.delivered[key]}")
        lines.extend(line[:600] for line in logged[-12:])
    return "\n".join(lines)

"""distribute_lead over real Postgres and Redis: billing once, rotation, deactivation, emails."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from arq.connections import ArqRedis

from shared.infra.errors import Busy, NotFound
from shared.infra.metrics import Metrics
from shared.infra.redis import deserialize_job
from shared.jobs.queues import EMAIL_SEND
from shared.marketplace.distribution import MAX_PROVIDERS_PER_LEAD, distribute_lead, lead_assigned_key
from tests.factories import create_lead, create_provider, set_last_assigned_at

PRICE = Decimal("10.00")


async def assert_balances_match_ledger(pool: Any) -> None:
    rows = await pool.fetch(
        """SELECT p.id, p.balance, COALESCE(SUM(l.amount), 0) AS ledger,
                  p.balance = COALESCE(SUM(l.amount), 0) AS ok
           FROM providers p LEFT JOIN ledger_entries l ON l.provider_id = p.id
           GROUP BY p.id"""
    )
    assert rows, "expected providers"
    assert [dict(r) for r in rows if not r["ok"]] == []


async def email_jobs(redis: ArqRedis) -> dict[str, dict[str, Any]]:
    """Queued send_email jobs by job id, with their kwargs."""
    job_ids = [j.decode() for j in await redis.zrange(EMAIL_SEND, 0, -1)]
    jobs = {}
    for job_id in job_ids:
        payload = await redis.get(f"arq:job:{job_id}")
        assert payload is not None
        jobs[job_id] = deserialize_job(payload)
    return jobs


def counter(metric: Any, labels: dict[str, str] | None = None) -> float:
    try:
        return float(metric.get(labels or {}))
    except KeyError:
        return 0.0


def histogram_count(metric: Any, labels: dict[str, str] | None = None) -> float:
    try:
        return float(metric.get(labels or {})["count"])
    except KeyError:
        return 0.0


async def test_assigns_up_to_three_least_recently_assigned_providers_and_enqueues_one_email_each(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    now = datetime.now(UTC)
    never = await create_provider(clean_db, name="never")
    one_hour = await create_provider(clean_db, name="1h")
    three_hours = await create_provider(clean_db, name="3h")
    two_hours = await create_provider(clean_db, name="2h")
    ten_minutes = await create_provider(clean_db, name="10m")
    for provider_id, age in [
        (one_hour, timedelta(hours=1)),
        (three_hours, timedelta(hours=3)),
        (two_hours, timedelta(hours=2)),
        (ten_minutes, timedelta(minutes=10)),
    ]:
        await set_last_assigned_at(clean_db, provider_id, now - age)
    lead_id = await create_lead(clean_db, source="web")

    result = await distribute_lead(clean_db, redis, metrics, lead_id)

    assert result.outcome == "assigned"
    assert result.lead_id == lead_id
    assert result.provider_ids == (never, three_hours, two_hours)  # NULLS FIRST, then oldest
    assert len(result.assignment_ids) == MAX_PROVIDERS_PER_LEAD
    assert result.deactivated_provider_ids == ()

    balances = {
        r["id"]: r for r in await clean_db.fetch("SELECT id, balance, last_assigned_at FROM providers")
    }
    for provider_id in result.provider_ids:
        assert balances[provider_id]["balance"] == Decimal("90.00")
        assert balances[provider_id]["last_assigned_at"] > now - timedelta(minutes=1)
    for provider_id in (one_hour, ten_minutes):
        assert balances[provider_id]["balance"] == Decimal("100.00")
    charges = await clean_db.fetch(
        "SELECT provider_id, amount, assignment_id FROM ledger_entries WHERE kind = 'charge'"
    )
    assert sorted((r["assignment_id"], r["amount"]) for r in charges) == sorted(
        (a, -PRICE) for a in result.assignment_ids
    )
    lead = await clean_db.fetchrow("SELECT status, distributed_at FROM leads WHERE id = $1", lead_id)
    assert lead["status"] == "distributed" and lead["distributed_at"] is not None
    await assert_balances_match_ledger(clean_db)

    jobs = await email_jobs(redis)
    assert await redis.zcard(EMAIL_SEND) == 3
    assert set(jobs) == {f"email:lead_assigned:{a}" for a in result.assignment_ids}
    emails = {p["email"]: p for p in await clean_db.fetch("SELECT id, email, name FROM providers")}
    for assignment_id, provider_id in zip(result.assignment_ids, result.provider_ids, strict=True):
        job = jobs[f"email:lead_assigned:{assignment_id}"]
        assert job["f"] == "send_email"
        kwargs = job["k"]
        assert kwargs["template"] == "lead_assigned"
        assert kwargs["idempotency_key"] == f"lead_assigned:{assignment_id}"
        assert emails[kwargs["to"]]["id"] == provider_id
        assert kwargs["context"] == {
            "provider_name": emails[kwargs["to"]]["name"],
            "lead_id": str(lead_id),
            "assignment_id": str(assignment_id),
            "price": "10.00",
            "source": "web",
        }

    assert counter(metrics.leads_distributed_total, {"outcome": "assigned"}) == 1
    assert counter(metrics.lead_assignments_total) == 3
    assert histogram_count(metrics.distribution_duration_seconds, {"status": "ok"}) == 1
    assert histogram_count(metrics.billing_duration_seconds) == 3
    assert counter(metrics.queue_jobs_enqueued_total, {"queue": EMAIL_SEND}) == 3


async def test_skips_providers_that_cannot_pay_or_are_inactive(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    poor = await create_provider(clean_db, balance=Decimal("9.99"), lead_price=PRICE)
    inactive = await create_provider(clean_db, status="inactive", inactive_reason="suspended")
    payer = await create_provider(clean_db, balance=Decimal("50.00"), lead_price=Decimal("12.50"))
    lead_id = await create_lead(clean_db)

    result = await distribute_lead(clean_db, redis, metrics, lead_id)

    assert result.provider_ids == (payer,)
    rows = {r["id"]: r["balance"] for r in await clean_db.fetch("SELECT id, balance FROM providers")}
    assert rows == {poor: Decimal("9.99"), inactive: Decimal("100.00"), payer: Decimal("37.50")}
    price = await clean_db.fetchval("SELECT price FROM lead_assignments WHERE provider_id = $1", payer)
    assert price == Decimal("12.50")
    await assert_balances_match_ledger(clean_db)
    assert counter(metrics.lead_assignments_total) == 1


async def test_provider_left_below_its_price_becomes_inactive(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    exact = await create_provider(clean_db, balance=Decimal("10.00"))
    almost = await create_provider(clean_db, balance=Decimal("19.99"))
    plenty = await create_provider(clean_db, balance=Decimal("20.00"))
    lead_id = await create_lead(clean_db)

    result = await distribute_lead(clean_db, redis, metrics, lead_id)

    assert set(result.provider_ids) == {exact, almost, plenty}
    assert set(result.deactivated_provider_ids) == {exact, almost}
    rows = {
        r["id"]: (r["status"], r["inactive_reason"], r["balance"])
        for r in await clean_db.fetch("SELECT id, status, inactive_reason, balance FROM providers")
    }
    assert rows == {
        exact: ("inactive", "insufficient_balance", Decimal("0.00")),
        almost: ("inactive", "insufficient_balance", Decimal("9.99")),
        plenty: ("active", None, Decimal("10.00")),
    }
    audited = await clean_db.fetch(
        "SELECT target_id, actor, metadata FROM audit_log WHERE action = 'provider.deactivated'"
    )
    assert {r["target_id"] for r in audited} == {str(exact), str(almost)}
    assert all(r["actor"] == "system:worker" for r in audited)
    assert all(r["metadata"]["reason"] == "insufficient_balance" for r in audited)
    await assert_balances_match_ledger(clean_db)

    # The deactivated providers are no longer picked for the next lead.
    second = await distribute_lead(clean_db, redis, metrics, await create_lead(clean_db))
    assert second.provider_ids == (plenty,)
    assert second.deactivated_provider_ids == (plenty,)
    await assert_balances_match_ledger(clean_db)


async def test_no_qualifying_provider_marks_the_lead_unassigned(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    await create_provider(clean_db, balance=Decimal("1.00"))
    lead_id = await create_lead(clean_db)

    result = await distribute_lead(clean_db, redis, metrics, lead_id)

    assert result.outcome == "unassigned"
    assert result.assignment_ids == () and result.provider_ids == ()
    assert await clean_db.fetchval("SELECT status FROM leads WHERE id = $1", lead_id) == "unassigned"
    assert await redis.zcard(EMAIL_SEND) == 0
    assert counter(metrics.leads_distributed_total, {"outcome": "unassigned"}) == 1
    assert counter(metrics.lead_assignments_total) == 0

    again = await distribute_lead(clean_db, redis, metrics, lead_id)
    assert again.outcome == "already_distributed"
    assert await clean_db.fetchval("SELECT count(*) FROM lead_assignments") == 0


async def test_retried_job_charges_once_and_enqueues_nothing_new(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    for _ in range(4):
        await create_provider(clean_db)
    lead_id = await create_lead(clean_db)

    first = await distribute_lead(clean_db, redis, metrics, lead_id)
    second = await distribute_lead(clean_db, redis, metrics, lead_id)

    assert first.outcome == "assigned"
    assert second.outcome == "already_distributed"
    assert sorted(second.assignment_ids) == sorted(first.assignment_ids)
    assert sorted(second.provider_ids) == sorted(first.provider_ids)
    assert await clean_db.fetchval("SELECT count(*) FROM lead_assignments") == 3
    assert await clean_db.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'") == 3
    assert await clean_db.fetchval("SELECT sum(balance) FROM providers") == Decimal("370.00")
    await assert_balances_match_ledger(clean_db)
    assert await redis.zcard(EMAIL_SEND) == 3
    assert counter(metrics.leads_distributed_total, {"outcome": "assigned"}) == 1
    assert counter(metrics.leads_distributed_total, {"outcome": "already_distributed"}) == 1
    assert counter(metrics.lead_assignments_total) == 3
    assert counter(metrics.queue_jobs_enqueued_total, {"queue": EMAIL_SEND}) == 3


async def test_concurrent_distributions_of_the_same_lead_charge_once(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    for _ in range(5):
        await create_provider(clean_db)
    lead_id = await create_lead(clean_db)

    results = await asyncio.gather(*(distribute_lead(clean_db, redis, metrics, lead_id) for _ in range(2)))

    assert sorted(r.outcome for r in results) == ["already_distributed", "assigned"]
    assert sorted(results[0].assignment_ids) == sorted(results[1].assignment_ids)
    assert await clean_db.fetchval("SELECT count(*) FROM lead_assignments") == 3
    assert await clean_db.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'") == 3
    await assert_balances_match_ledger(clean_db)
    assert await redis.zcard(EMAIL_SEND) == 3


async def test_concurrent_distributions_of_many_leads_never_overdraw(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    for _ in range(4):
        await create_provider(clean_db, balance=Decimal("30.00"))  # three leads each, at most
    leads = [await create_lead(clean_db) for _ in range(8)]

    async def distribute_retrying(lead: uuid.UUID) -> Any:
        while True:  # what the worker does with a Busy lead: retry after a backoff
            try:
                return await distribute_lead(clean_db, redis, metrics, lead)
            except Busy:
                await asyncio.sleep(0.01)

    results = await asyncio.wait_for(asyncio.gather(*(distribute_retrying(lead) for lead in leads)), 30)

    assert all(len(set(r.provider_ids)) == len(r.provider_ids) <= 3 for r in results)
    assigned = sum(len(r.assignment_ids) for r in results)
    # Busy providers make a lead wait, never go unassigned: all capacity is used, never more.
    assert assigned == 12
    rows = await clean_db.fetch(
        """SELECT p.balance, p.status, count(a.id) AS paid
           FROM providers p LEFT JOIN lead_assignments a ON a.provider_id = p.id GROUP BY p.id"""
    )
    for row in rows:
        assert row["balance"] == Decimal("30.00") - row["paid"] * PRICE >= 0
        assert (row["status"] == "inactive") == (row["balance"] < PRICE)
    await assert_balances_match_ledger(clean_db)
    assert await redis.zcard(EMAIL_SEND) == assigned


async def test_retry_after_a_crash_before_enqueue_re_enqueues_only_unsent_emails(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    for _ in range(3):
        await create_provider(clean_db)
    lead_id = await create_lead(clean_db)
    first = await distribute_lead(clean_db, redis, metrics, lead_id)
    await redis.flushdb()  # as if the worker died between COMMIT and the enqueue
    sent_assignment = first.assignment_ids[0]
    await clean_db.execute(
        """INSERT INTO email_outbox
               (idempotency_key, to_address, template, subject, body, backend, status, sent_at)
           VALUES ($1, 'x@example.test', 'lead_assigned', 's', 'b', 'log', 'sent', now())""",
        lead_assigned_key(sent_assignment),
    )

    retry = await distribute_lead(clean_db, redis, metrics, lead_id)

    assert retry.outcome == "already_distributed"
    assert set(await email_jobs(redis)) == {f"email:lead_assigned:{a}" for a in first.assignment_ids[1:]}
    await assert_balances_match_ledger(clean_db)


async def test_unknown_lead_is_not_found(clean_db: Any, redis: ArqRedis, metrics: Metrics) -> None:
    with pytest.raises(NotFound):
        await distribute_lead(clean_db, redis, metrics, uuid.uuid4())
    assert histogram_count(metrics.distribution_duration_seconds, {"status": "error"}) == 1
    assert await redis.zcard(EMAIL_SEND) == 0


async def test_billing_failure_of_one_provider_rolls_back_only_that_provider(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    """A provider already holding the lead (the unique index firing) is skipped, the rest billed."""
    holder = await create_provider(clean_db)
    other = await create_provider(clean_db)
    await set_last_assigned_at(clean_db, other, datetime.now(UTC))  # holder is picked first
    lead_id = await create_lead(clean_db)
    # A stray assignment without the lead being marked: only the unique index stops a double charge.
    await clean_db.execute(
        "INSERT INTO lead_assignments (lead_id, provider_id, price) VALUES ($1, $2, 10)", lead_id, holder
    )

    result = await distribute_lead(clean_db, redis, metrics, lead_id)

    assert result.provider_ids == (other,)
    assert counter(metrics.billing_failures_total, {"reason": "duplicate_assignment"}) == 1
    assert await clean_db.fetchval("SELECT balance FROM providers WHERE id = $1", holder) == Decimal("100.00")
    assert await clean_db.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'") == 1
    await assert_balances_match_ledger(clean_db)


async def test_all_eligible_providers_locked_is_busy_not_unassigned(clean_db: Any, redis: Any) -> None:
    provider_id = await create_provider(clean_db, balance=Decimal("100.00"), lead_price=Decimal("10.00"))
    lead_id = await create_lead(clean_db)
    async with clean_db.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT 1 FROM providers WHERE id = $1 FOR UPDATE", provider_id)
        with pytest.raises(Busy):
            await distribute_lead(clean_db, redis, Metrics(), lead_id)
        assert await clean_db.fetchval("SELECT status FROM leads WHERE id = $1", lead_id) == "new"
        assert await clean_db.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'") == 0
    result = await distribute_lead(clean_db, redis, Metrics(), lead_id)
    assert result.outcome == "assigned" and result.provider_ids == (provider_id,)

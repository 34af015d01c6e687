"""refund_bad_lead over real Postgres: one refund per assignment, balance equal to the ledger, audit."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import pytest

from shared.infra.errors import Invalid, NotFound
from shared.infra.metrics import Metrics
from shared.marketplace.refunds import refund_bad_lead
from tests.factories import create_assignment, create_lead, create_provider


async def balance_matches_ledger(pool: Any, provider_id: uuid.UUID) -> bool:
    matches: bool = await pool.fetchval(
        """SELECT p.balance = COALESCE(SUM(l.amount), 0)
           FROM providers p LEFT JOIN ledger_entries l ON l.provider_id = p.id
           WHERE p.id = $1 GROUP BY p.id""",
        provider_id,
    )
    return matches


def counter(metric: Any) -> float:
    try:
        return float(metric.get({}))
    except KeyError:
        return 0.0


async def charged_assignment(pool: Any, price: Decimal = Decimal("12.50")) -> tuple[uuid.UUID, uuid.UUID]:
    provider_id = await create_provider(pool, balance=Decimal("100.00"), lead_price=price)
    assignment_id = await create_assignment(pool, await create_lead(pool), provider_id, price=price)
    assert await balance_matches_ledger(pool, provider_id)
    return provider_id, assignment_id


async def test_refund_marks_bad_credits_price_and_audits_once(clean_db: Any, metrics: Metrics) -> None:
    provider_id, assignment_id = await charged_assignment(clean_db)

    first = await refund_bad_lead(clean_db, metrics, assignment_id, "  wrong phone number ")
    second = await refund_bad_lead(clean_db, metrics, assignment_id, "wrong phone number")

    assert (first.outcome, first.amount, first.provider_id) == ("refunded", Decimal("12.50"), provider_id)
    assert second.outcome == "already_refunded"
    assert second.amount == Decimal("12.50")
    assignment = await clean_db.fetchrow(
        "SELECT status, bad_reason, refunded_at FROM lead_assignments WHERE id = $1", assignment_id
    )
    assert assignment["status"] == "bad"
    assert assignment["bad_reason"] == "wrong phone number"
    assert assignment["refunded_at"] is not None
    refunds = await clean_db.fetch(
        "SELECT amount, assignment_id FROM ledger_entries WHERE kind = 'refund' AND provider_id = $1",
        provider_id,
    )
    assert [(r["amount"], r["assignment_id"]) for r in refunds] == [(Decimal("12.50"), assignment_id)]
    assert await clean_db.fetchval("SELECT balance FROM providers WHERE id = $1", provider_id) == Decimal(
        "100.00"
    )
    assert await balance_matches_ledger(clean_db, provider_id)

    audits = await clean_db.fetch(
        "SELECT actor, target_type, target_id, metadata FROM audit_log WHERE action = 'lead.refunded'"
    )
    assert len(audits) == 1
    assert audits[0]["actor"] == "system:worker"
    assert (audits[0]["target_type"], audits[0]["target_id"]) == ("lead_assignment", str(assignment_id))
    assert audits[0]["metadata"]["amount"] == "12.50"
    assert audits[0]["metadata"]["reason"] == "wrong phone number"
    assert counter(metrics.refunds_total) == 1
    assert counter(metrics.bad_leads_total) == 1


async def test_concurrent_refunds_of_one_assignment_refund_once(clean_db: Any, metrics: Metrics) -> None:
    provider_id, assignment_id = await charged_assignment(clean_db, Decimal("10.00"))

    results = await asyncio.gather(
        *(refund_bad_lead(clean_db, metrics, assignment_id, "spam") for _ in range(3))
    )

    assert sorted(r.outcome for r in results) == ["already_refunded", "already_refunded", "refunded"]
    assert await clean_db.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'refund'") == 1
    assert await balance_matches_ledger(clean_db, provider_id)
    assert counter(metrics.refunds_total) == 1


async def test_refund_does_not_reactivate_provider(clean_db: Any, metrics: Metrics) -> None:
    """Reactivation is the cron's transition; a refund only moves money."""
    provider_id, assignment_id = await charged_assignment(clean_db, Decimal("10.00"))
    await clean_db.execute(
        "UPDATE providers SET status = 'inactive', inactive_reason = 'insufficient_balance' WHERE id = $1",
        provider_id,
    )

    await refund_bad_lead(clean_db, metrics, assignment_id, "duplicate lead")

    row = await clean_db.fetchrow("SELECT status, balance FROM providers WHERE id = $1", provider_id)
    assert (row["status"], row["balance"]) == ("inactive", Decimal("100.00"))


async def test_unknown_assignment_is_not_found(clean_db: Any, metrics: Metrics) -> None:
    with pytest.raises(NotFound):
        await refund_bad_lead(clean_db, metrics, uuid.uuid4(), "spam")
    assert counter(metrics.refunds_total) == 0


@pytest.mark.parametrize("reason", ["", "   ", "x" * 501])
async def test_reason_is_required_and_bounded(clean_db: Any, metrics: Metrics, reason: str) -> None:
    _, assignment_id = await charged_assignment(clean_db)
    with pytest.raises(Invalid):
        await refund_bad_lead(clean_db, metrics, assignment_id, reason)
    assert (
        await clean_db.fetchval("SELECT status FROM lead_assignments WHERE id = $1", assignment_id)
        == "assigned"
    )

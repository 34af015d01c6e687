"""reactivate_subscriptions: only providers switched off for lack of balance, once covered, once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.infra.metrics import Metrics
from shared.marketplace.reactivation import reactivate_subscriptions
from tests.factories import create_provider


async def test_reactivates_only_covered_insufficient_balance_providers_once(
    clean_db: Any, metrics: Metrics
) -> None:
    inactive = {"status": "inactive", "lead_price": Decimal("10.00")}
    async with clean_db.acquire() as conn:
        topped_up = await create_provider(
            conn, **inactive, inactive_reason="insufficient_balance", balance=Decimal("25.00")
        )
        exactly_covered = await create_provider(
            conn, **inactive, inactive_reason="insufficient_balance", balance=Decimal("10.00")
        )
        still_short = await create_provider(
            conn, **inactive, inactive_reason="insufficient_balance", balance=Decimal("9.99")
        )
        cancelled = await create_provider(
            conn, **inactive, inactive_reason="cancelled", balance=Decimal("500.00")
        )
        suspended = await create_provider(
            conn, **inactive, inactive_reason="suspended", balance=Decimal("500.00")
        )
        active = await create_provider(conn, balance=Decimal("500.00"))
        before = {row["id"]: dict(row) for row in await conn.fetch("SELECT * FROM providers")}

    result = await reactivate_subscriptions(clean_db, metrics)

    assert result.reactivated == 2
    assert set(result.provider_ids) == {topped_up, exactly_covered}
    assert metrics.subscriptions_reactivated_total.get({}) == 2
    async with clean_db.acquire() as conn:
        after = {row["id"]: dict(row) for row in await conn.fetch("SELECT * FROM providers")}
        audit_rows = await conn.fetch("SELECT actor, action, target_type, target_id, metadata FROM audit_log")
    for provider_id in (topped_up, exactly_covered):
        assert (after[provider_id]["status"], after[provider_id]["inactive_reason"]) == ("active", None)
        assert after[provider_id]["balance"] == before[provider_id]["balance"]
    for provider_id in (still_short, cancelled, suspended, active):
        assert after[provider_id] == before[provider_id], "untouched, updated_at included"

    assert len(audit_rows) == 2
    by_target = {row["target_id"]: row for row in audit_rows}
    assert set(by_target) == {str(topped_up), str(exactly_covered)}
    for row in audit_rows:
        assert (row["actor"], row["action"], row["target_type"]) == (
            "system:cron",
            "provider.reactivated",
            "provider",
        )
    assert by_target[str(topped_up)]["metadata"] == {
        "before": {
            "status": "inactive",
            "inactive_reason": "insufficient_balance",
            "balance": "25.00",
            "lead_price": "10.00",
        },
        "after": {"status": "active", "inactive_reason": None, "balance": "25.00", "lead_price": "10.00"},
    }

    # Idempotent: the second run finds nothing, writes nothing, counts nothing.
    again = await reactivate_subscriptions(clean_db, metrics)
    assert (again.reactivated, again.provider_ids) == (0, ())
    assert metrics.subscriptions_reactivated_total.get({}) == 2
    async with clean_db.acquire() as conn:
        assert {row["id"]: dict(row) for row in await conn.fetch("SELECT * FROM providers")} == after
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 2


async def test_nothing_eligible_still_exports_the_counter(clean_db: Any, metrics: Metrics) -> None:
    async with clean_db.acquire() as conn:
        await create_provider(
            conn, status="inactive", inactive_reason="insufficient_balance", balance=Decimal("1.00")
        )
    result = await reactivate_subscriptions(clean_db, metrics)
    assert result.reactivated == 0
    assert metrics.subscriptions_reactivated_total.get({}) == 0

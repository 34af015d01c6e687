"""Reconcile each provider's cached balance with its ledger (cron ``reconcile_balances``).

The ledger (``ledger_entries``) is the source of truth; ``providers.balance`` is a cache that
every writer (``distribute_lead``, ``refund_bad_lead``, top-ups) changes together with its ledger
row, in one transaction, while holding the provider row lock.

1. **Scan**: one set-based query sums the ledger per provider (``GROUP BY``; no ledger rows sum
   to 0) and returns only the providers whose balance differs. One statement has one snapshot, and
   every writer commits balance and ledger row atomically, so a pair read here is consistent: a
   charge in flight is not a false discrepancy. Money is ``numeric``/``Decimal`` throughout.
2. **Decide per mismatch**, with ``d = balance - ledger_sum``: ``0 < |d| <= auto_correct_max`` is
   corrected (balance := ledger sum) and audited (``balance.corrected``); ``|d| > max`` is NOT
   corrected: one ``balance_discrepancy_alert`` ERROR line, an audit row
   (``balance.discrepancy_alert``) and ``fmhl_balance_discrepancies_total{action="alerted"}``, for
   a human. ``|d| == max`` is corrected.

Guarding the correction against concurrent charges: **lock, then re-sum** (not compare-and-set).
Each mismatch is handled in its own short READ COMMITTED transaction that first locks the provider
row (``SELECT balance ... FOR UPDATE``) and then, in a *separate, later* statement, sums the ledger.
Because every writer inserts its ledger row while holding that same row lock, once we hold the lock
no writer is in flight, and the next statement's fresh snapshot sees every ledger row committed
before it: the (balance, ledger sum) pair is consistent, and it stays so until we commit. ``d`` is
then recomputed from these fresh values and the decision is taken again (correct, alert, or
nothing if it vanished), so a discrepancy that changed since the scan is re-checked, never decided
on stale numbers and never lost.

Why not one statement? ``SELECT balance, (SELECT sum(...)) ... FOR UPDATE`` is subtly wrong: the
sum uses the statement's snapshot, taken *before* the lock is granted; when a charge held the lock,
Postgres re-reads the newer row but not the newer ledger, so the pair is a fresh balance with a
stale sum and the "correction" erases the charge (the concurrency test catches exactly this).
Compare-and-set (``UPDATE ... SET balance = (SELECT sum(...)) WHERE id = $1 AND balance = $old``)
is safe against charges, because the re-read row fails the guard, but its correctness rests on
those re-check semantics, a miss needs a retry loop (a busy provider can miss repeatedly), and the
alert path would still decide on unlocked numbers. Lock-then-re-sum is simpler to reason about and
decides both paths on a consistent pair. The lock costs ~1 ms per mismatched provider (rare), and
``distribute_lead`` picks providers with ``SKIP LOCKED``, so it skips that provider for that
millisecond instead of waiting.

``discrepancies`` counts what the scan found; ``corrected + alerted`` can be smaller when a
discrepancy vanished before its re-check (logged as ``balance_discrepancy_vanished``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from shared import audit
from shared.infra.db import execute, fetch, fetchval
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics

ACTOR = "system:cron"

Outcome = Literal["corrected", "alerted", "vanished"]

# ``checked`` rides along on every row; the LEFT JOIN from ``total`` keeps one row (id NULL) when
# nothing differs, so the count still arrives in this single statement.
SCAN_MISMATCHES = """
WITH ledger AS (
    SELECT provider_id, sum(amount) AS ledger_sum
    FROM ledger_entries
    GROUP BY provider_id
), compared AS (
    SELECT p.id, p.balance, coalesce(l.ledger_sum, 0::numeric) AS ledger_sum
    FROM providers p
    LEFT JOIN ledger l ON l.provider_id = p.id
), total AS (
    SELECT count(*) AS checked FROM compared
)
SELECT total.checked, m.id, m.balance, m.ledger_sum
FROM total
LEFT JOIN compared m ON m.balance <> m.ledger_sum
ORDER BY m.id
"""

LOCK_PROVIDER = "SELECT balance FROM providers WHERE id = $1 FOR UPDATE"

# A separate statement from LOCK_PROVIDER on purpose: its snapshot is taken after the lock is held.
SUM_LEDGER = "SELECT coalesce(sum(amount), 0::numeric) FROM ledger_entries WHERE provider_id = $1"

SET_BALANCE = "UPDATE providers SET balance = $2, updated_at = now() WHERE id = $1"


@dataclass(frozen=True, slots=True)
class ReconciliationResult:
    checked: int
    discrepancies: int
    corrected: int
    alerted: int
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class Mismatch:
    provider_id: uuid.UUID
    balance: Decimal
    ledger_sum: Decimal


async def reconcile_balances(
    pool: Any, metrics: Metrics, *, auto_correct_max: Decimal
) -> ReconciliationResult:
    """Compare every provider's balance with its ledger sum; correct small differences, alert on large."""
    started = time.perf_counter()
    checked, mismatches = await _scan(pool)
    outcomes: dict[Outcome, int] = {"corrected": 0, "alerted": 0, "vanished": 0}
    for mismatch in mismatches:
        outcome = await _settle(pool, mismatch.provider_id, auto_correct_max)
        outcomes[outcome] += 1
        # After commit, so a rolled-back correction is never counted.
        if outcome != "vanished":
            metrics.inc(metrics.balance_discrepancies_total, {"action": outcome})
    # Zero increments keep both series present from the first run (the alert rule uses increase()).
    for action in ("corrected", "alerted"):
        metrics.inc(metrics.balance_discrepancies_total, {"action": action}, amount=0)
    return ReconciliationResult(
        checked=checked,
        discrepancies=len(mismatches),
        corrected=outcomes["corrected"],
        alerted=outcomes["alerted"],
        duration_seconds=time.perf_counter() - started,
    )


async def _scan(pool: Any) -> tuple[int, list[Mismatch]]:
    async with pool.acquire() as conn:
        rows = await fetch(conn, "reconcile_scan_mismatches", SCAN_MISMATCHES)
    checked = int(rows[0]["checked"]) if rows else 0
    mismatches = [
        Mismatch(provider_id=row["id"], balance=row["balance"], ledger_sum=row["ledger_sum"])
        for row in rows
        if row["id"] is not None
    ]
    return checked, mismatches


async def _settle(pool: Any, provider_id: uuid.UUID, auto_correct_max: Decimal) -> Outcome:
    """Re-check one provider under its row lock and correct, alert, or do nothing."""
    async with pool.acquire() as conn, conn.transaction(isolation="read_committed"):
        balance: Decimal | None = await fetchval(conn, "reconcile_lock_provider", LOCK_PROVIDER, provider_id)
        if balance is None:  # deleted since the scan
            return "vanished"
        ledger_sum: Decimal = await fetchval(conn, "reconcile_sum_ledger", SUM_LEDGER, provider_id)
        difference = balance - ledger_sum
        facts = {"balance": str(balance), "ledger_sum": str(ledger_sum), "difference": str(difference)}
        if difference == 0:
            log_event("INFO", "balance_discrepancy_vanished", provider_id=str(provider_id))
            return "vanished"
        if abs(difference) <= auto_correct_max:
            await execute(conn, "reconcile_set_balance", SET_BALANCE, provider_id, ledger_sum)
            await audit.record(
                conn,
                actor=ACTOR,
                action="balance.corrected",
                target_type="provider",
                target_id=str(provider_id),
                metadata={"before": str(balance), "after": str(ledger_sum), **facts},
            )
            log_event("INFO", "balance_corrected", provider_id=str(provider_id), **facts)
            return "corrected"
        await audit.record(
            conn,
            actor=ACTOR,
            action="balance.discrepancy_alert",
            target_type="provider",
            target_id=str(provider_id),
            metadata={**facts, "auto_correct_max": str(auto_correct_max)},
        )
    log_event("ERROR", "balance_discrepancy_alert", provider_id=str(provider_id), **facts)
    return "alerted"

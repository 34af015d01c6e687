"""Reactivate providers whose top-up now covers their lead price (cron ``reactivate_subscriptions``).

``distribute_lead`` deactivates a provider left below its ``lead_price`` with reason
``insufficient_balance``. Once its balance covers the price again (a top-up, a refund), this job
puts it back in rotation. Providers inactive for any other reason (``cancelled``, ``suspended``)
were switched off by a human and are never touched here.

One set-based ``UPDATE ... RETURNING`` flips every eligible provider at once; the ``WHERE`` clause
is the whole rule, so a second run finds nothing and changes nothing. Under READ COMMITTED a row
changed concurrently is re-checked against that same ``WHERE`` before it is updated, so a provider
whose balance dropped meanwhile stays inactive. The audit rows (one per provider) are written in
the same transaction: either the flip and its audit trail both commit, or neither does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared import audit
from shared.infra.db import fetch
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics

ACTOR = "system:cron"

REACTIVATE_COVERED = """
UPDATE providers
SET status = 'active', inactive_reason = NULL, updated_at = now()
WHERE status = 'inactive'
  AND inactive_reason = 'insufficient_balance'
  AND balance >= lead_price
RETURNING id, balance, lead_price
"""


@dataclass(frozen=True, slots=True)
class ReactivationResult:
    reactivated: int
    provider_ids: tuple[uuid.UUID, ...]


async def reactivate_subscriptions(pool: Any, metrics: Metrics) -> ReactivationResult:
    """Flip inactive-for-lack-of-balance providers whose balance covers their price back to active."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await fetch(conn, "reactivation_reactivate_covered", REACTIVATE_COVERED)
        # Bounded by the providers flipped in this tick (usually a handful); the audit helper keeps
        # the row shape (request id, actor) in one place.
        for row in rows:
            balance, price = str(row["balance"]), str(row["lead_price"])
            await audit.record(
                conn,
                actor=ACTOR,
                action="provider.reactivated",
                target_type="provider",
                target_id=str(row["id"]),
                metadata={
                    "before": {
                        "status": "inactive",
                        "inactive_reason": "insufficient_balance",
                        "balance": balance,
                        "lead_price": price,
                    },
                    "after": {
                        "status": "active",
                        "inactive_reason": None,
                        "balance": balance,
                        "lead_price": price,
                    },
                },
            )
    provider_ids = tuple(row["id"] for row in rows)
    # Incremented after commit, by zero too, so the series exists from the first run.
    metrics.inc(metrics.subscriptions_reactivated_total, amount=len(provider_ids))
    if provider_ids:
        log_event("INFO", "subscriptions_reactivated", count=len(provider_ids))
    return ReactivationResult(reactivated=len(provider_ids), provider_ids=provider_ids)

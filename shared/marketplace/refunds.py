"""Refunding a bad lead: the assignment is marked bad and its price goes back to the provider.

One transaction: lock the assignment, mark it ``bad`` (reason, ``refunded_at``), ledger ``refund`` of
+price, cached balance +price, audit row. Idempotent: an assignment already ``bad`` is left alone
and the call returns ``already_refunded``; the unique ``(assignment_id, kind)`` ledger index makes a
second refund impossible even if that check were bypassed.

A provider made inactive for lack of balance is not reactivated here, even if the refund covers
its price again: ``reactivate_subscriptions`` (cron) owns that transition and its audit trail.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

from shared import audit
from shared.infra.db import execute, fetchrow, fetchval
from shared.infra.errors import Invalid, NotFound
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics

MAX_REASON_LENGTH: Final = 500

RefundOutcome = Literal["refunded", "already_refunded"]


@dataclass(frozen=True, slots=True)
class RefundResult:
    assignment_id: uuid.UUID
    provider_id: uuid.UUID
    amount: Decimal
    outcome: RefundOutcome


LOCK_ASSIGNMENT = """
SELECT id, lead_id, provider_id, price, status FROM lead_assignments WHERE id = $1 FOR UPDATE
"""

MARK_BAD = """
UPDATE lead_assignments SET status = 'bad', bad_reason = $2, refunded_at = now() WHERE id = $1
"""

INSERT_REFUND = """
INSERT INTO ledger_entries (provider_id, kind, amount, assignment_id, note)
VALUES ($1, 'refund', $2, $3, $4)
"""

CREDIT_PROVIDER = """
UPDATE providers SET balance = balance + $2, updated_at = now() WHERE id = $1 RETURNING balance
"""


async def refund_bad_lead(pool: Any, metrics: Metrics, assignment_id: uuid.UUID, reason: str) -> RefundResult:
    """Mark ``assignment_id`` bad and refund its price once. Unknown id → ``NotFound``."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_LENGTH:
        raise Invalid(f"reason must be 1-{MAX_REASON_LENGTH} characters")
    async with pool.acquire() as conn, conn.transaction():
        assignment = await fetchrow(conn, "lead_assignment_lock", LOCK_ASSIGNMENT, assignment_id)
        if assignment is None:
            raise NotFound(f"lead assignment {assignment_id} does not exist")
        provider_id: uuid.UUID = assignment["provider_id"]
        price: Decimal = assignment["price"]
        if assignment["status"] == "bad":
            return RefundResult(assignment_id, provider_id, price, "already_refunded")
        await execute(conn, "lead_assignment_mark_bad", MARK_BAD, assignment_id, reason)
        await execute(
            conn, "ledger_refund_insert", INSERT_REFUND, provider_id, price, assignment_id, "bad lead refund"
        )
        balance: Decimal = await fetchval(conn, "provider_credit", CREDIT_PROVIDER, provider_id, price)
        await audit.record(
            conn,
            actor=audit.WORKER_ACTOR,
            action="lead.refunded",
            target_type="lead_assignment",
            target_id=str(assignment_id),
            metadata={
                "lead_id": str(assignment["lead_id"]),
                "provider_id": str(provider_id),
                "amount": str(price),
                "balance_after": str(balance),
                "reason": reason,
            },
        )
    metrics.inc(metrics.bad_leads_total)
    metrics.inc(metrics.refunds_total)
    log_event(
        "INFO",
        "lead_refunded",
        assignment_id=str(assignment_id),
        provider_id=str(provider_id),
        amount=str(price),
    )
    return RefundResult(assignment_id, provider_id, price, "refunded")

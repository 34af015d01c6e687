"""Distributing a lead: charge up to three providers for it and tell each of them by email.

One database transaction per lead: it locks the lead row (``FOR UPDATE``, so two jobs for the same
lead serialize and the second sees it distributed), picks the providers (``FOR UPDATE SKIP
LOCKED``, so distributions of different leads never wait on each other), bills each provider in
its own savepoint (assignment row, ledger ``charge`` of -price, cached balance -price, rotation
time) and marks the lead ``distributed`` or ``unassigned``. Either all of it commits or none of it
does, so a job killed halfway is simply run again. Money never leaves ``Decimal``.

Idempotency: a lead that is no longer ``new`` is not billed again; its existing assignments come
back with outcome ``already_distributed``. The unique ``(lead_id, provider_id)`` and
``(assignment_id, kind)`` indexes are the last line of defence.

Emails are enqueued after COMMIT (a rolled-back distribution must not announce anything). That
leaves a window: the process can die between COMMIT and the enqueue. So a retry that finds the lead
already distributed enqueues the ``lead_assigned`` email again for every assignment whose outbox row
is not ``sent`` yet. That is harmless: the arq job id is deterministic (arq refuses a second job
while it still knows the first) and ``send_email`` deduplicates on the idempotency key. Once the
emails are sent, a retry enqueues nothing.

A lead found ``unassigned`` (no provider could pay when it was distributed) is also terminal here:
distributing it again is a business decision, not a retry. A lead that finds no provider only
because every eligible one is locked by concurrent distributions is *not* unassigned: that raises
``Busy`` (transient), the transaction rolls back and the worker retries it with backoff.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal

import asyncpg
from arq.connections import ArqRedis

from shared import audit
from shared.email.outbox import enqueue_email, sent_idempotency_keys
from shared.infra.db import Conn, execute, fetch, fetchrow, fetchval
from shared.infra.errors import Busy, NotFound
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics

MAX_PROVIDERS_PER_LEAD: Final = 3

DistributionOutcome = Literal["assigned", "unassigned", "already_distributed"]
BillingFailureReason = Literal["insufficient_balance", "duplicate_assignment", "serialization", "db_error"]


@dataclass(frozen=True, slots=True)
class DistributionResult:
    lead_id: uuid.UUID
    assignment_ids: tuple[uuid.UUID, ...]
    provider_ids: tuple[uuid.UUID, ...]
    outcome: DistributionOutcome
    deactivated_provider_ids: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True, slots=True)
class _Assignment:
    """What the ``lead_assigned`` email needs about one assignment."""

    assignment_id: uuid.UUID
    provider_id: uuid.UUID
    provider_name: str
    provider_email: str
    price: Decimal


class _BillingSkipped(Exception):
    """Raised inside a provider's savepoint to roll that provider's billing back."""

    def __init__(self, reason: BillingFailureReason) -> None:
        super().__init__(reason)
        self.reason: BillingFailureReason = reason


def lead_assigned_key(assignment_id: uuid.UUID) -> str:
    return f"lead_assigned:{assignment_id}"


async def distribute_lead(
    pool: Any, redis: ArqRedis, metrics: Metrics, lead_id: uuid.UUID
) -> DistributionResult:
    """Distribute ``lead_id`` once; see the module docstring. Unknown lead → ``NotFound``."""
    started = time.perf_counter()
    status = "error"
    try:
        result = await _distribute(pool, redis, metrics, lead_id)
        status = "ok"
        return result
    finally:
        metrics.observe(
            metrics.distribution_duration_seconds, time.perf_counter() - started, {"status": status}
        )


LOCK_LEAD = "SELECT id, status, source FROM leads WHERE id = $1 FOR UPDATE"

MARK_LEAD = "UPDATE leads SET status = $2, distributed_at = now() WHERE id = $1"


async def _distribute(pool: Any, redis: ArqRedis, metrics: Metrics, lead_id: uuid.UUID) -> DistributionResult:
    deactivated: list[uuid.UUID] = []
    async with pool.acquire() as conn, conn.transaction():
        lead = await fetchrow(conn, "lead_lock", LOCK_LEAD, lead_id)
        if lead is None:
            raise NotFound(f"lead {lead_id} does not exist")
        source: str = lead["source"]
        if lead["status"] != "new":
            outcome: DistributionOutcome = "already_distributed"
            assignments = await _existing_assignments(conn, lead_id)
            sent = await sent_idempotency_keys(
                conn, [lead_assigned_key(a.assignment_id) for a in assignments]
            )
            to_notify = [a for a in assignments if lead_assigned_key(a.assignment_id) not in sent]
        else:
            assignments = []
            for candidate in await fetch(
                conn, "providers_pick_for_lead", PICK_PROVIDERS, MAX_PROVIDERS_PER_LEAD
            ):
                billed = await _bill_provider(conn, metrics, lead_id, candidate, deactivated)
                if billed is not None:
                    assignments.append(billed)
            if not assignments and await fetchval(conn, "providers_any_eligible", ANY_ELIGIBLE):
                # Every provider that could pay is locked by other distributions right now: that
                # is contention, not "nobody can take this lead". Roll back (the lead stays
                # new) and let the worker retry with backoff.
                log_event("INFO", "lead_distribution_busy", lead_id=str(lead_id))
                raise Busy(f"every eligible provider is busy; lead {lead_id} will be retried")
            outcome = "assigned" if assignments else "unassigned"
            await execute(conn, "lead_mark_distributed", MARK_LEAD, lead_id, _lead_status(outcome))
            to_notify = assignments

    metrics.inc(metrics.leads_distributed_total, {"outcome": outcome})
    if outcome == "assigned":
        metrics.inc(metrics.lead_assignments_total, amount=len(assignments))
    log_event(
        "INFO",
        "lead_distributed",
        lead_id=str(lead_id),
        outcome=outcome,
        assignments=len(assignments),
        deactivated=len(deactivated),
    )
    for assignment in to_notify:
        await enqueue_email(
            redis,
            metrics,
            to=assignment.provider_email,
            template="lead_assigned",
            context=_email_context(lead_id, source, assignment),
            idempotency_key=lead_assigned_key(assignment.assignment_id),
        )
    return DistributionResult(
        lead_id=lead_id,
        assignment_ids=tuple(a.assignment_id for a in assignments),
        provider_ids=tuple(a.provider_id for a in assignments),
        outcome=outcome,
        deactivated_provider_ids=tuple(deactivated),
    )


def _lead_status(outcome: DistributionOutcome) -> str:
    return "distributed" if outcome == "assigned" else "unassigned"


def _email_context(lead_id: uuid.UUID, source: str, assignment: _Assignment) -> dict[str, str]:
    """JSON-only job arguments; no lead payload (contact details) travels through Redis or the DLQ."""
    return {
        "provider_name": assignment.provider_name,
        "lead_id": str(lead_id),
        "assignment_id": str(assignment.assignment_id),
        "price": str(assignment.price),
        "source": source,
    }


SELECT_ASSIGNMENTS = """
SELECT a.id AS assignment_id, a.provider_id, p.name AS provider_name, p.email AS provider_email, a.price
FROM lead_assignments a
JOIN providers p ON p.id = a.provider_id
WHERE a.lead_id = $1
ORDER BY a.created_at, a.id
"""


async def _existing_assignments(conn: Conn, lead_id: uuid.UUID) -> list[_Assignment]:
    rows = await fetch(conn, "lead_assignments_of_lead", SELECT_ASSIGNMENTS, lead_id)
    return [_Assignment(**dict(row)) for row in rows]


# Rotation: never-assigned providers first, then the one waiting longest (providers_active_rotation_idx).
PICK_PROVIDERS = """
SELECT id, name, email, lead_price
FROM providers
WHERE status = 'active' AND balance >= lead_price
ORDER BY last_assigned_at ASC NULLS FIRST, id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

# Unlocked read: is anyone eligible at all (even if locked by a concurrent distribution)?
ANY_ELIGIBLE = "SELECT EXISTS (SELECT 1 FROM providers WHERE status = 'active' AND balance >= lead_price)"

# Guarded again (status, balance) although the row is locked: billing must never overdraw.
CHARGE_PROVIDER = """
UPDATE providers
SET balance = balance - lead_price,
    last_assigned_at = now(),
    status = CASE WHEN balance - lead_price < lead_price THEN 'inactive' ELSE status END,
    inactive_reason = CASE WHEN balance - lead_price < lead_price THEN 'insufficient_balance'
                           ELSE inactive_reason END,
    updated_at = now()
WHERE id = $1 AND status = 'active' AND balance >= lead_price AND lead_price = $2
RETURNING balance, status
"""

INSERT_ASSIGNMENT = """
INSERT INTO lead_assignments (lead_id, provider_id, price) VALUES ($1, $2, $3) RETURNING id
"""

INSERT_CHARGE = """
INSERT INTO ledger_entries (provider_id, kind, amount, assignment_id, note)
VALUES ($1, 'charge', $2, $3, $4)
"""


async def _bill_provider(
    conn: Conn,
    metrics: Metrics,
    lead_id: uuid.UUID,
    candidate: Any,
    deactivated: list[uuid.UUID],
) -> _Assignment | None:
    """One provider's billing in a savepoint; ``None`` (and a metric) when that provider is skipped.

    A skipped provider (balance no longer covers the price, or already holds this lead) rolls back
    only its own savepoint. Any other database error aborts the whole distribution: a partial
    distribution is worse than a retried one.
    """
    provider_id: uuid.UUID = candidate["id"]
    price: Decimal = candidate["lead_price"]
    started = time.perf_counter()
    try:
        async with conn.transaction():
            charged = await fetchrow(conn, "provider_charge", CHARGE_PROVIDER, provider_id, price)
            if charged is None:
                raise _BillingSkipped("insufficient_balance")
            assignment_id: uuid.UUID = await fetchval(
                conn, "lead_assignment_insert", INSERT_ASSIGNMENT, lead_id, provider_id, price
            )
            await execute(
                conn,
                "ledger_charge_insert",
                INSERT_CHARGE,
                provider_id,
                -price,
                assignment_id,
                f"lead {lead_id}",
            )
            if charged["status"] == "inactive":
                await audit.record(
                    conn,
                    actor=audit.WORKER_ACTOR,
                    action="provider.deactivated",
                    target_type="provider",
                    target_id=str(provider_id),
                    metadata={
                        "reason": "insufficient_balance",
                        "balance": str(charged["balance"]),
                        "lead_price": str(price),
                        "assignment_id": str(assignment_id),
                    },
                )
    except _BillingSkipped as skipped:
        _billing_failed(metrics, skipped.reason, lead_id, provider_id)
        return None
    except asyncpg.UniqueViolationError:
        _billing_failed(metrics, "duplicate_assignment", lead_id, provider_id)
        return None
    except (asyncpg.SerializationError, asyncpg.DeadlockDetectedError):
        _billing_failed(metrics, "serialization", lead_id, provider_id)
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        _billing_failed(metrics, "db_error", lead_id, provider_id)
        raise
    finally:
        metrics.observe(metrics.billing_duration_seconds, time.perf_counter() - started)
    if charged["status"] == "inactive":
        deactivated.append(provider_id)
    return _Assignment(assignment_id, provider_id, candidate["name"], candidate["email"], price)


def _billing_failed(
    metrics: Metrics, reason: BillingFailureReason, lead_id: uuid.UUID, provider_id: uuid.UUID
) -> None:
    metrics.inc(metrics.billing_failures_total, {"reason": reason})
    log_event("WARNING", "billing_failed", reason=reason, lead_id=str(lead_id), provider_id=str(provider_id))

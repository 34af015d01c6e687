"""Job functions: unpack JSON arguments, call ``shared``, return a JSON-able summary.

Each runs under ``worker.failure.with_failure_policy`` (see ``worker.registry``); none of them
catches errors itself.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared.email import outbox as emails
from shared.infra import ids
from shared.infra.errors import Invalid
from shared.infra.jsonable import to_jsonable
from shared.marketplace import distribution, refunds, reports


def parse_uuid(value: Any, name: str) -> uuid.UUID:
    parsed = ids.parse_uuid(value)
    if parsed is None:
        raise Invalid(f"{name} must be a UUID, got {str(value)[:64]!r}")
    return parsed


def summary(result: Any) -> Any:
    """A JSON-safe copy of a result dataclass (Decimal and UUID as strings) for arq's result key."""
    return to_jsonable(result)


async def distribute_lead(ctx: dict[str, Any], lead_id: str) -> Any:
    result = await distribution.distribute_lead(
        ctx["db"].pool, ctx["redis"], ctx["metrics"], parse_uuid(lead_id, "lead_id")
    )
    return summary(result)


async def refund_bad_lead(ctx: dict[str, Any], assignment_id: str, reason: str) -> Any:
    result = await refunds.refund_bad_lead(
        ctx["db"].pool, ctx["metrics"], parse_uuid(assignment_id, "assignment_id"), reason
    )
    return summary(result)


async def send_email(
    ctx: dict[str, Any], to: str, template: str, context: dict[str, Any], idempotency_key: str
) -> Any:
    result = await emails.send_email(
        ctx["db"].pool,
        ctx["settings"],
        ctx["metrics"],
        to=to,
        template=template,
        context=context,
        idempotency_key=idempotency_key,
    )
    return summary(result)


async def export_report(ctx: dict[str, Any], export_id: str) -> Any:
    result = await reports.export_report(
        ctx["db"].pool, ctx["redis"], ctx["metrics"], parse_uuid(export_id, "export_id")
    )
    return summary(result)

"""Rows for tests: ``await create_provider(conn, balance=Decimal("10.00"))`` and friends."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any


async def create_provider(conn: Any, **overrides: Any) -> uuid.UUID:
    values = {
        "name": f"provider-{uuid.uuid4().hex[:6]}",
        "email": f"p-{uuid.uuid4().hex[:8]}@example.test",
        "status": "active",
        "inactive_reason": None,
        "balance": Decimal("100.00"),
        "lead_price": Decimal("10.00"),
    } | overrides
    provider_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO providers (name, email, status, inactive_reason, balance, lead_price)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        values["name"],
        values["email"],
        values["status"],
        values["inactive_reason"],
        values["balance"],
        values["lead_price"],
    )
    if overrides.get("with_opening_ledger", True) and values["balance"] != 0:
        await conn.execute(
            "INSERT INTO ledger_entries (provider_id, kind, amount, note)"
            " VALUES ($1, $2, $3, 'opening balance')",
            provider_id,
            "topup" if values["balance"] > 0 else "adjustment",
            values["balance"],
        )
    return provider_id


async def create_lead(conn: Any, **overrides: Any) -> uuid.UUID:
    values = {"source": "web", "payload": {"name": "Jane", "zip": "10001"}} | overrides
    lead_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO leads (source, payload) VALUES ($1, $2) RETURNING id",
        values["source"],
        values["payload"],
    )
    return lead_id

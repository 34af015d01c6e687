"""Providers: the businesses that buy leads, with a cached balance kept equal to their ledger sum."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared.infra.db import Conn, fetchrow
from shared.infra.errors import NotFound


@dataclass(frozen=True, slots=True)
class Provider:
    id: uuid.UUID
    name: str
    email: str
    status: str
    inactive_reason: str | None
    balance: Decimal
    lead_price: Decimal
    last_assigned_at: datetime | None


SELECT_PROVIDER = """
SELECT id, name, email, status, inactive_reason, balance, lead_price, last_assigned_at
FROM providers WHERE id = $1
"""


async def get_provider(conn: Conn, provider_id: uuid.UUID) -> Provider:
    row = await fetchrow(conn, "provider_get", SELECT_PROVIDER, provider_id)
    if row is None:
        raise NotFound(f"provider {provider_id} does not exist")
    return Provider(**dict(row))

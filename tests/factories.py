"""Rows for tests: ``await create_provider(conn, balance=Decimal("10.00"))`` and friends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cryptography.fernet import Fernet

from shared.auth.passwords import hash_password
from shared.auth.sessions import hash_token, new_token
from shared.auth.totp import code_at, current_step, encrypt_secret, new_secret
from tests.secret_scan import remember


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


DLQ_DEFAULTS: dict[str, Any] = {
    "queue_name": "email_send",
    "function": "send_email",
    "args": [],
    "kwargs": {},
    "error_type": "SMTPServerDisconnected",
    "error_message": "Connection unexpectedly closed",
    "stack_trace": "",
    "fingerprint": "fp-test",
    "attempts": 5,
    "reason": "exhausted",
    "failed_at": None,  # now()
    "resolved_at": None,
    "resolved_by": None,
    "resolution": None,
    "retry_job_id": None,
    "retry_of": None,
}


async def create_dlq_entry(conn: Any, **overrides: Any) -> uuid.UUID:
    """One dead-letter row; pass ``resolved_at`` (and optionally ``resolution``) for a resolved one.

    A resolved entry defaults to ``resolution='manual'`` by ``tests``; ``resolution='retried'``
    gets a ``retry_job_id`` unless one is given.
    """
    values = DLQ_DEFAULTS | {"job_id": f"job-{uuid.uuid4().hex}"} | overrides
    if values["resolved_at"] is not None:
        values["resolution"] = values["resolution"] or "manual"
        values["resolved_by"] = values["resolved_by"] or "tests"
        if values["resolution"] == "retried" and values["retry_job_id"] is None:
            values["retry_job_id"] = f"retry-{uuid.uuid4().hex}"
    entry_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO dead_letter_queue (
               queue_name, job_id, function, args, kwargs, error_type, error_message, stack_trace,
               fingerprint, attempts, reason, failed_at, resolved_at, resolved_by, resolution,
               retry_job_id, retry_of)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($12, now()), $13, $14, $15,
                   $16, $17)
           RETURNING id""",
        values["queue_name"],
        values["job_id"],
        values["function"],
        values["args"],
        values["kwargs"],
        values["error_type"],
        values["error_message"],
        values["stack_trace"],
        values["fingerprint"],
        values["attempts"],
        values["reason"],
        values["failed_at"],
        values["resolved_at"],
        values["resolved_by"],
        values["resolution"],
        values["retry_job_id"],
        values["retry_of"],
    )
    return entry_id


async def bulk_create_dlq_entries(
    conn: Any,
    count: int,
    *,
    job_prefix: str,
    failed_at: Any,
    resolved_at: Any = None,
    queue_name: str = "email_send",
) -> int:
    """``count`` dead-letter rows in one ``INSERT ... SELECT generate_series`` statement.

    ``failed_at``/``resolved_at`` are aware datetimes. Job ids are ``{job_prefix}-{n}`` (unique
    per queue, so use a distinct prefix per call). Resolved rows (``resolved_at`` given) are
    resolved manually by ``tests``. Returns the number inserted.
    """
    status: str = await conn.execute(
        """INSERT INTO dead_letter_queue (
               queue_name, job_id, function, error_type, error_message, fingerprint, attempts, reason,
               failed_at, resolved_at, resolved_by, resolution)
           SELECT $1, $2 || '-' || g, 'send_email', 'SMTPServerDisconnected', 'Connection closed ' || g,
                  'fp-bulk', 5, 'exhausted', $3, $4,
                  CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE 'tests' END,
                  CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE 'manual' END
           FROM generate_series(1, $5::int) AS g""",
        queue_name,
        job_prefix,
        failed_at,
        resolved_at,
        count,
    )
    return int(status.rsplit(" ", 1)[1])


async def create_assignment(
    conn: Any, lead_id: uuid.UUID, provider_id: uuid.UUID, *, price: Decimal = Decimal("10.00")
) -> uuid.UUID:
    """A charged assignment as distribution leaves it: row, ledger ``charge`` -price, balance -price."""
    assignment_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO lead_assignments (lead_id, provider_id, price) VALUES ($1, $2, $3) RETURNING id",
        lead_id,
        provider_id,
        price,
    )
    await conn.execute(
        "INSERT INTO ledger_entries (provider_id, kind, amount, assignment_id) VALUES ($1, 'charge', $2, $3)",
        provider_id,
        -price,
        assignment_id,
    )
    await conn.execute("UPDATE providers SET balance = balance - $2 WHERE id = $1", provider_id, price)
    await conn.execute(
        "UPDATE leads SET status = 'distributed', distributed_at = now() WHERE id = $1", lead_id
    )
    return assignment_id


async def set_last_assigned_at(conn: Any, provider_id: uuid.UUID, at: Any) -> None:
    """Place a provider in the distribution rotation (``None`` = never assigned)."""
    await conn.execute("UPDATE providers SET last_assigned_at = $2 WHERE id = $1", provider_id, at)


async def create_report_export(conn: Any, provider_id: uuid.UUID, **overrides: Any) -> uuid.UUID:
    values = {"status": "pending"} | overrides
    export_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO report_exports (provider_id, status) VALUES ($1, $2) RETURNING id",
        provider_id,
        values["status"],
    )
    return export_id


@dataclass(frozen=True)
class AdminAccount:
    """What ``create_admin`` made: log in with ``email``, ``password`` and ``code_now()``."""

    user_id: uuid.UUID
    email: str
    role: str
    password: str = field(repr=False)
    totp_secret: str = field(repr=False)

    def code_now(self, step_offset: int = 0) -> str:
        return code_at(self.totp_secret, current_step() + step_offset)


# Every admin a test makes without choosing its password gets this one, hashed once per session
# with today's cost: one scrypt derivation is ~0.5 s of CPU, and fixtures that make an admin per
# test (the DLQ API's 90 tests, the redrive API's two per test...) spent minutes of the suite
# hashing a fresh random password each time. The hash is a real ``hash_password`` result, so
# logins verify it as they verify the CLI's; accounts still differ in email and TOTP secret. A test
# that passes ``password=`` gets its own hash, as before.
_DEFAULT_PASSWORD = f"pw-{uuid.uuid4().hex}"
_default_password_hash: str | None = None


def _hash_of(password: str) -> str:
    global _default_password_hash
    if password != _DEFAULT_PASSWORD:
        return hash_password(password)
    if _default_password_hash is None:
        _default_password_hash = hash_password(password)
    return _default_password_hash


async def create_admin(
    conn: Any,
    *,
    mfa_encryption_key: str,
    role: str = "admin",
    email: str | None = None,
    password: str | None = None,
    disabled: bool = False,
) -> AdminAccount:
    """A user with a real scrypt hash and a Fernet-encrypted TOTP secret (same as the CLI makes).

    Without ``password``, the session's shared default password and its one hash (see above)."""
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.test"
    password = password or _DEFAULT_PASSWORD
    secret = new_secret()
    user_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO users (email, password_hash, role, totp_secret_encrypted, disabled_at)
           VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END) RETURNING id""",
        email,
        _hash_of(password),
        role,
        encrypt_secret(Fernet(mfa_encryption_key.encode()), secret),
        disabled,
    )
    remember(password, secret)
    return AdminAccount(user_id, email, role, password, secret)


async def create_admin_session(
    conn: Any, user_id: uuid.UUID, *, expired: bool = False, revoked: bool = False
) -> str:
    """A session row for ``user_id`` (bypassing login); returns its bearer token."""
    token = new_token()
    await conn.execute(
        """INSERT INTO admin_sessions (user_id, token_hash, mfa_passed, created_at, expires_at, revoked_at)
           VALUES ($1, $2, true,
                   now() - interval '2 hours',
                   CASE WHEN $3 THEN now() - interval '1 hour' ELSE now() + interval '1 hour' END,
                   CASE WHEN $4 THEN now() END)""",
        user_id,
        hash_token(token),
        expired,
        revoked,
    )
    remember(token)
    return token

"""Admin accounts: the ``users`` repository and the account use cases behind ``fmhl-ops admin``.

Use cases (``create_user``, ``reset_mfa``, ``disable_user``) take a connection and own their
transaction (a savepoint when the caller already holds one); each writes one audit row and
never logs or stores a password, TOTP secret or URI in clear. ``ensure_demo_admin`` is for
``fmhl-ops dev`` only: it (re)creates ``admin@fmhl.local`` with fresh credentials.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from shared import audit
from shared.auth.passwords import check_password_policy, hash_password
from shared.auth.roles import ROLES
from shared.auth.sessions import revoke_user_sessions
from shared.auth.totp import encrypt_secret, mfa_cipher, new_secret, provisioning_uri
from shared.infra.config import Settings
from shared.infra.db import Conn, execute, fetchrow
from shared.infra.errors import Conflict, Invalid, NotFound

MAX_EMAIL_LENGTH = 320
DEMO_ADMIN_EMAIL = "admin@fmhl.local"
_EMAIL_SHAPE = re.compile(r"^[^@\s]+@[^@\s]+$")


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    email: str
    role: str
    password_hash: str = field(repr=False)
    totp_secret_encrypted: str = field(repr=False)
    totp_last_used_step: int | None
    disabled_at: datetime | None
    locked_until: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A user with a freshly enrolled TOTP secret; the URI is shown to the operator once."""

    user_id: uuid.UUID
    email: str
    role: str
    otpauth_uri: str = field(repr=False)
    sessions_revoked: int = 0


@dataclass(frozen=True, slots=True)
class Disabled:
    user_id: uuid.UUID
    email: str
    disabled_at: datetime
    already_disabled: bool
    sessions_revoked: int


def normalize_email(email: str) -> str:
    """Lower-cased and trimmed (the column requires lower case); ``Invalid`` if not an address."""
    normalized = email.strip().lower()
    if len(normalized) > MAX_EMAIL_LENGTH or not _EMAIL_SHAPE.match(normalized):
        raise Invalid("email must be an address like name@example.com")
    return normalized


_USER_COLUMNS = (
    "id, email, role, password_hash, totp_secret_encrypted, totp_last_used_step, disabled_at,"
    " locked_until, created_at"
)


def _user(row: Any) -> User:
    return User(**dict(row))


SELECT_USER_BY_EMAIL = f"SELECT {_USER_COLUMNS} FROM users WHERE email = $1"


async def get_user_by_email(conn: Conn, email: str) -> User | None:
    row = await fetchrow(conn, "user_by_email", SELECT_USER_BY_EMAIL, email)
    return _user(row) if row is not None else None


SELECT_USER_FOR_UPDATE = f"SELECT {_USER_COLUMNS} FROM users WHERE email = $1 FOR UPDATE"


async def lock_user_row(conn: Conn, email: str) -> User | None:
    """The user, row-locked until the caller's transaction ends."""
    row = await fetchrow(conn, "user_by_email_for_update", SELECT_USER_FOR_UPDATE, email)
    return _user(row) if row is not None else None


INSERT_USER = f"""
INSERT INTO users (email, password_hash, role, totp_secret_encrypted)
VALUES ($1, $2, $3, $4)
RETURNING {_USER_COLUMNS}
"""


async def insert_user(
    conn: Conn, *, email: str, password_hash: str, role: str, totp_secret_encrypted: str
) -> User:
    """Insert a user; ``Conflict`` (code ``email_taken``) if the email exists."""
    try:
        row = await fetchrow(
            conn, "user_insert", INSERT_USER, email, password_hash, role, totp_secret_encrypted
        )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"a user with email {email} already exists", code="email_taken") from exc
    return _user(row)


UPDATE_TOTP_SECRET = """
UPDATE users SET totp_secret_encrypted = $2, totp_last_used_step = NULL, updated_at = now()
WHERE id = $1
"""


async def set_totp_secret(conn: Conn, user_id: uuid.UUID, totp_secret_encrypted: str) -> None:
    await execute(conn, "user_set_totp_secret", UPDATE_TOTP_SECRET, user_id, totp_secret_encrypted)


UPDATE_DISABLED = """
UPDATE users SET disabled_at = now(), updated_at = now()
WHERE id = $1
RETURNING disabled_at
"""


async def mark_disabled(conn: Conn, user_id: uuid.UUID) -> datetime:
    row = await fetchrow(conn, "user_disable", UPDATE_DISABLED, user_id)
    disabled_at: datetime = row["disabled_at"]
    return disabled_at


CLAIM_TOTP_STEP = """
UPDATE users SET totp_last_used_step = $2
WHERE id = $1 AND (totp_last_used_step IS NULL OR totp_last_used_step < $2)
RETURNING id
"""


async def claim_totp_step(conn: Conn, user_id: uuid.UUID, step: int) -> bool:
    """Record ``step`` as used unless it (or a later one) already was: True for exactly one caller.

    One conditional UPDATE: a concurrent caller with the same step waits on the row lock, then
    re-evaluates the WHERE clause against the committed value and matches nothing.
    """
    row = await fetchrow(conn, "user_claim_totp_step", CLAIM_TOTP_STEP, user_id, step)
    return row is not None


REHASH_PASSWORD = """
UPDATE users SET password_hash = $3, updated_at = now()
WHERE id = $1 AND password_hash = $2
"""


async def replace_password_hash(conn: Conn, user_id: uuid.UUID, old_hash: str, new_hash: str) -> bool:
    """Store ``new_hash`` if the stored hash is still ``old_hash`` (a concurrent password change wins)."""
    status = await execute(conn, "user_rehash_password", REHASH_PASSWORD, user_id, old_hash, new_hash)
    return bool(status == "UPDATE 1")


UPDATE_LOCKED_UNTIL = """
UPDATE users SET locked_until = now() + make_interval(secs => $2), updated_at = now()
WHERE id = $1
RETURNING locked_until
"""


async def lock_account(conn: Conn, user_id: uuid.UUID, seconds: int) -> datetime:
    row = await fetchrow(conn, "user_lock", UPDATE_LOCKED_UNTIL, user_id, float(seconds))
    locked_until: datetime = row["locked_until"]
    return locked_until


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")


async def create_user(
    conn: Conn, settings: Settings, *, email: str, role: str, password: str, actor: str = "cli"
) -> Enrolment:
    """Create an account with a new TOTP secret. ``Invalid`` for a bad email/role/password,
    ``Conflict`` (``email_taken``) for a duplicate, ``ConfigError`` without MFA_ENCRYPTION_KEY."""
    cipher = mfa_cipher(settings)
    email = normalize_email(email)
    _check_role(role)
    try:
        check_password_policy(password)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc
    secret = new_secret()
    password_hash = await asyncio.to_thread(hash_password, password)
    async with conn.transaction():
        user = await insert_user(
            conn,
            email=email,
            password_hash=password_hash,
            role=role,
            totp_secret_encrypted=encrypt_secret(cipher, secret),
        )
        await audit.record(
            conn,
            actor=actor,
            action="user.created",
            target_type="user",
            target_id=str(user.id),
            metadata={"email": email, "role": role},
        )
    return Enrolment(user.id, email, role, provisioning_uri(secret, email))


async def reset_mfa(conn: Conn, settings: Settings, *, email: str, actor: str = "cli") -> Enrolment:
    """Replace the TOTP secret, forget the last used step, revoke every session."""
    cipher = mfa_cipher(settings)
    email = normalize_email(email)
    secret = new_secret()
    async with conn.transaction():
        user = await lock_user_row(conn, email)
        if user is None:
            raise NotFound(f"no user with email {email}")
        await set_totp_secret(conn, user.id, encrypt_secret(cipher, secret))
        revoked = await revoke_user_sessions(conn, user.id)
        await audit.record(
            conn,
            actor=actor,
            action="user.mfa_reset",
            target_type="user",
            target_id=str(user.id),
            metadata={"email": email, "sessions_revoked": revoked},
        )
    return Enrolment(user.id, email, user.role, provisioning_uri(secret, email), revoked)


async def disable_user(conn: Conn, *, email: str, actor: str = "cli") -> Disabled:
    """Set ``disabled_at`` and revoke every session. Disabling twice changes (and audits) nothing."""
    email = normalize_email(email)
    async with conn.transaction():
        user = await lock_user_row(conn, email)
        if user is None:
            raise NotFound(f"no user with email {email}")
        if user.disabled_at is not None:
            return Disabled(user.id, email, user.disabled_at, already_disabled=True, sessions_revoked=0)
        disabled_at = await mark_disabled(conn, user.id)
        revoked = await revoke_user_sessions(conn, user.id)
        await audit.record(
            conn,
            actor=actor,
            action="user.disabled",
            target_type="user",
            target_id=str(user.id),
            metadata={"email": email, "sessions_revoked": revoked},
        )
    return Disabled(user.id, email, disabled_at, already_disabled=False, sessions_revoked=revoked)


UPSERT_DEMO_ADMIN = """
INSERT INTO users (email, password_hash, role, totp_secret_encrypted)
VALUES ($1, $2, 'admin', $3)
ON CONFLICT (email) DO UPDATE SET
    password_hash = EXCLUDED.password_hash,
    role = 'admin',
    totp_secret_encrypted = EXCLUDED.totp_secret_encrypted,
    totp_last_used_step = NULL,
    disabled_at = NULL,
    locked_until = NULL,
    updated_at = now()
RETURNING id, (xmax = 0) AS created
"""


async def ensure_demo_admin(pool: Any, settings: Settings) -> tuple[str, str, str]:
    """Development only (``fmhl-ops dev``): create ``admin@fmhl.local``, or re-enrol it with a
    new random password and TOTP secret (enabled, unlocked, old sessions revoked).

    Returns ``(email, password, otpauth_uri)`` for the caller to show once. The password exists
    only in this return value; the database holds its scrypt hash.
    """
    cipher = mfa_cipher(settings)
    password = secrets.token_urlsafe(18)
    secret = new_secret()
    password_hash = await asyncio.to_thread(hash_password, password)
    async with pool.acquire() as conn, conn.transaction():
        row = await fetchrow(
            conn,
            "user_upsert_demo_admin",
            UPSERT_DEMO_ADMIN,
            DEMO_ADMIN_EMAIL,
            password_hash,
            encrypt_secret(cipher, secret),
        )
        revoked = 0 if row["created"] else await revoke_user_sessions(conn, row["id"])
        await audit.record(
            conn,
            actor="cli",
            action="user.created" if row["created"] else "user.reenrolled",
            target_type="user",
            target_id=str(row["id"]),
            metadata={
                "email": DEMO_ADMIN_EMAIL,
                "role": "admin",
                "source": "dev",
                "sessions_revoked": revoked,
            },
        )
    return DEMO_ADMIN_EMAIL, password, provisioning_uri(secret, DEMO_ADMIN_EMAIL)

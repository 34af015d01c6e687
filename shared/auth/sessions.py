"""Admin sessions: opaque bearer tokens stored only as their SHA-256.

A token is ``secrets.token_urlsafe(32)`` (32 random bytes, 43 characters). The database keeps
``sha256(token)``, so a leaked table (or backup) yields no usable token; a plain hash (not a KDF)
suffices because the token has 256 bits of entropy. A session is *live* while it is not revoked,
not expired, passed MFA, and its user is not disabled — checked in one query on every request, so
disabling a user or revoking a session takes effect at once.

Console sessions also have an idle timeout (``CONSOLE_IDLE_TIMEOUT_SECONDS``) besides the absolute
expiry: ``find_console_session`` revokes a session unused for longer, and ``touch_session`` records
use in ``last_seen_at`` at most once a minute (one write per minute, not per page), so the idle
clock is exact to a minute. API bearer tokens have only the absolute expiry.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from shared.auth.roles import Role
from shared.infra.db import Conn, execute, fetchrow
from shared.infra.logs import log_event

TOKEN_BYTES = 32
# token_urlsafe's alphabet; the bounds leave room to lengthen tokens without breaking old ones.
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,256}$")


@dataclass(frozen=True, slots=True)
class IssuedSession:
    session_id: uuid.UUID
    token: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class LiveSession:
    session_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    role: Role
    expires_at: datetime


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def is_well_formed_token(token: str) -> bool:
    """Shape check before any I/O: what ``new_token`` produces, nothing else."""
    return _TOKEN_SHAPE.match(token) is not None


INSERT_SESSION = """
INSERT INTO admin_sessions (user_id, token_hash, mfa_passed, ip, user_agent, expires_at)
VALUES ($1, $2, true, $3, $4, now() + make_interval(secs => $5))
RETURNING id, expires_at
"""


async def create_session(
    conn: Conn, *, user_id: uuid.UUID, ttl_seconds: int, ip: str | None, user_agent: str | None
) -> IssuedSession:
    """A new MFA-passed session; the caller owns the transaction (and audits it)."""
    token = new_token()
    row = await fetchrow(
        conn,
        "session_insert",
        INSERT_SESSION,
        user_id,
        hash_token(token),
        ip,
        user_agent[:512] if user_agent else None,
        float(ttl_seconds),
    )
    return IssuedSession(session_id=row["id"], token=token, expires_at=row["expires_at"])


# What "live" means, said once for the API's and the console's lookups.
_LIVE_BY_TOKEN = """
FROM admin_sessions s
JOIN users u ON u.id = s.user_id
WHERE s.token_hash = $1
  AND s.revoked_at IS NULL
  AND s.expires_at > now()
  AND s.mfa_passed
  AND u.disabled_at IS NULL
"""
SELECT_LIVE_SESSION = "SELECT s.id AS session_id, s.user_id, u.email, u.role, s.expires_at" + _LIVE_BY_TOKEN


async def find_live_session(conn: Conn, token: str) -> LiveSession | None:
    row = await fetchrow(conn, "session_find_live", SELECT_LIVE_SESSION, hash_token(token))
    return LiveSession(**dict(row)) if row is not None else None


SELECT_CONSOLE_SESSION = (
    "SELECT s.id AS session_id, s.user_id, u.email, u.role, s.expires_at,"
    " EXTRACT(EPOCH FROM now() - s.last_seen_at)::float8 AS idle_seconds" + _LIVE_BY_TOKEN
)

TOUCH_SESSION = "UPDATE admin_sessions SET last_seen_at = now() WHERE id = $1"
# last_seen_at is written at most this often per session
TOUCH_INTERVAL_SECONDS = 60.0


async def find_console_session(
    conn: Conn, token: str, *, idle_timeout_seconds: int, activity: bool = True
) -> LiveSession | None:
    """The live session behind a console cookie, or None; a session idle for longer than
    ``idle_timeout_seconds`` is revoked on the spot (logged ``console_session_idle_expired``).
    ``activity`` False (an automatic refresh, not a person) checks without counting as use."""
    row = await fetchrow(conn, "session_find_console", SELECT_CONSOLE_SESSION, hash_token(token))
    if row is None:
        return None
    fields = dict(row)
    idle_seconds = float(fields.pop("idle_seconds"))
    session = LiveSession(**fields)
    if idle_seconds > idle_timeout_seconds:
        await revoke_session(conn, session.session_id)
        log_event(
            "INFO",
            "console_session_idle_expired",
            session_id=str(session.session_id),
            user_id=str(session.user_id),
            idle_seconds=round(idle_seconds),
        )
        return None
    if activity and idle_seconds >= TOUCH_INTERVAL_SECONDS:
        await execute(conn, "session_touch", TOUCH_SESSION, session.session_id)
    return session


REVOKE_SESSION = """
UPDATE admin_sessions SET revoked_at = now()
WHERE id = $1 AND revoked_at IS NULL
"""


async def revoke_session(conn: Conn, session_id: uuid.UUID) -> bool:
    """Revoke one session; False if it was already revoked."""
    status = await execute(conn, "session_revoke", REVOKE_SESSION, session_id)
    return status == "UPDATE 1"


REVOKE_USER_SESSIONS = """
UPDATE admin_sessions SET revoked_at = now()
WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
"""


async def revoke_user_sessions(conn: Conn, user_id: uuid.UUID) -> int:
    """Revoke every live session of a user; returns how many."""
    status = await execute(conn, "session_revoke_user", REVOKE_USER_SESSIONS, user_id)
    return int(status.rsplit(" ", 1)[-1])

"""The login use case: password + TOTP → an opaque session token, with lockout and rate limits.

Numbers (``LoginPolicy``; the contract fixes the account ones):

* account: 5 failed attempts within 15 minutes lock the account for 15 minutes
  (``users.locked_until``); while locked every attempt, even a correct one, gets ``locked``
  and is not recorded (it neither extends the lock nor learns whether the password was right);
* client IP: 20 failed attempts within 15 minutes → ``rate_limited`` for that IP until its
  oldest counted failure ages out. Only failures count, so a busy office behind one NAT is fine.
  The IP is what the ASGI server reports; behind a proxy, run uvicorn with proxy headers.

Failures do not reset on success: the contract's "five failures in 15 minutes" is read literally.

What an attacker cannot learn:

* which of email, password or code was wrong — one ``invalid_credentials`` for all, and an
  unknown email costs the same scrypt work (against a dummy hash) as a known one;
* whether an email exists by locking it — five failures on an unknown email answer ``locked``
  for 15 minutes too (derived from ``login_attempts``, as no ``users`` row exists to hold it);
* a session from a code seen once — each accepted code's time step is stored in
  ``users.totp_last_used_step`` with a conditional UPDATE, so a replay, or a second concurrent
  login with the same code, fails.

Shape: (0) admission to this process's hashing queue (``shared.auth.kdf_queue``: bounded, one
place per address; full → 429 at once, nothing recorded); (1) one short transaction,
serialised per client IP by an advisory lock, that checks the IP and lock state and *reserves* the
attempt (a ``pending`` failure row) before any hashing, so a burst from one address cannot get
more than its 20 attempts through to scrypt however many arrive at once; (2) scrypt in a thread,
holding no database connection; (3) one transaction, serialised per email by an advisory lock,
that re-checks the lock, claims the TOTP step, and resolves the reservation (success or failure)
with the session and the audit row. Because the lock is re-checked in (3), concurrent guesses get
no more than five answers per window. Only resolved failures count towards an account's lock (a
correct login racing wrong ones does not lock the account by itself); pending ones count towards
the IP limit. An attempt refused in (3) because the account locked meanwhile is not recorded.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import audit
from shared.auth.kdf_queue import HashingQueueFull, KdfQueue
from shared.auth.passwords import hash_password, needs_rehash, verify_dummy, verify_password
from shared.auth.sessions import IssuedSession, create_session, revoke_session
from shared.auth.totp import decrypt_secret, matched_step, mfa_cipher
from shared.auth.users import User, claim_totp_step, get_user_by_email, lock_account, replace_password_hash
from shared.infra.config import Settings
from shared.infra.db import Conn, execute, fetchrow, fetchval
from shared.infra.errors import RateLimited, Unauthenticated
from shared.infra.logs import log_event, now_utc


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    max_failures_per_account: int = 5
    account_window_seconds: int = 15 * 60
    lock_seconds: int = 15 * 60
    max_failures_per_ip: int = 20
    ip_window_seconds: int = 15 * 60


DEFAULT_POLICY = LoginPolicy()


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    email: str
    password: str = field(repr=False)
    totp_code: str = field(repr=False)
    ip: str | None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class LoginSuccess:
    user_id: uuid.UUID
    email: str
    role: str
    session: IssuedSession


class InvalidCredentials(Unauthenticated):
    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("invalid email, password or code")


class LoginThrottled(RateLimited):
    """``locked`` (the account) or ``rate_limited`` (the client IP), with a Retry-After hint."""

    def __init__(self, message: str, *, code: str, retry_after_seconds: int) -> None:
        super().__init__(message, code=code)
        self.retry_after_seconds = max(1, retry_after_seconds)


def _seconds_until(moment: datetime) -> int:
    return math.ceil((moment - now_utc()).total_seconds())


IP_FAILURES = """
SELECT count(*) AS failures, min(attempted_at) AS oldest
FROM login_attempts
WHERE ip = $1 AND NOT succeeded AND attempted_at > now() - make_interval(secs => $2)
"""


async def _check_ip(conn: Conn, ip: str | None, policy: LoginPolicy) -> None:
    if ip is None:
        return
    row = await fetchrow(conn, "login_ip_failures", IP_FAILURES, ip, float(policy.ip_window_seconds))
    if row["failures"] >= policy.max_failures_per_ip:
        log_event("WARNING", "login_rate_limited", ip=ip, failures=row["failures"])
        raise LoginThrottled(
            "too many failed logins from this address; try again later",
            code="rate_limited",
            retry_after_seconds=_seconds_until(row["oldest"]) + policy.ip_window_seconds,
        )


# The lock an unknown email would have if it were an account: some failure within the last
# lock period that was the Nth within its own window. Unknown emails are rare and the table is
# small, so the scan by email (no index) is cheap.
UNKNOWN_EMAIL_LOCKED_UNTIL = """
SELECT max(f.attempted_at) + make_interval(secs => $3) AS locked_until
FROM login_attempts f
WHERE f.email = $1 AND f.user_id IS NULL AND NOT f.succeeded AND NOT f.pending
  AND f.attempted_at > now() - make_interval(secs => $3)
  AND (SELECT count(*) FROM login_attempts w
       WHERE w.email = $1 AND w.user_id IS NULL AND NOT w.succeeded AND NOT w.pending
         AND w.attempted_at > f.attempted_at - make_interval(secs => $4)
         AND w.attempted_at <= f.attempted_at) >= $2
"""


async def _check_lock(conn: Conn, email: str, user: User | None, policy: LoginPolicy) -> None:
    if user is not None:
        locked_until = user.locked_until
    else:
        locked_until = await fetchval(
            conn,
            "login_unknown_email_lock",
            UNKNOWN_EMAIL_LOCKED_UNTIL,
            email,
            policy.max_failures_per_account,
            float(policy.lock_seconds),
            float(policy.account_window_seconds),
        )
    if locked_until is not None and locked_until > now_utc():
        log_event("WARNING", "login_locked", user_id=str(user.id) if user else None)
        raise LoginThrottled(
            "account temporarily locked after repeated failed logins",
            code="locked",
            retry_after_seconds=_seconds_until(locked_until),
        )


SERIALIZE_IP = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"

RESERVE_ATTEMPT = """
INSERT INTO login_attempts (email, user_id, ip, succeeded, pending) VALUES ($1, $2, $3, false, true)
RETURNING id
"""


@dataclass(frozen=True, slots=True)
class _Reservation:
    attempt_id: int
    user: User | None


async def _reserve(conn: Conn, email: str, ip: str | None, policy: LoginPolicy) -> _Reservation:
    """Phase 1: refuse a rate-limited IP or a locked account, else record the attempt as pending.

    Serialised per IP, so concurrent attempts from one address are counted one after another.
    """
    async with conn.transaction():
        if ip is not None:
            await fetchval(conn, "login_serialize_ip", SERIALIZE_IP, "fmhl_login_ip:" + ip)
        await _check_ip(conn, ip, policy)
        user = await get_user_by_email(conn, email)
        await _check_lock(conn, email, user, policy)
        user_id = user.id if user is not None else None
        attempt_id = await fetchval(conn, "login_attempt_reserve", RESERVE_ATTEMPT, email, user_id, ip)
    return _Reservation(int(attempt_id), user)


RESOLVE_ATTEMPT = """
UPDATE login_attempts SET pending = false, succeeded = $2, user_id = $3 WHERE id = $1
"""

DROP_ATTEMPT = "DELETE FROM login_attempts WHERE id = $1"

ACCOUNT_FAILURES = """
SELECT count(*) FROM login_attempts
WHERE user_id = $1 AND NOT succeeded AND NOT pending AND attempted_at > now() - make_interval(secs => $2)
"""

SERIALIZE_EMAIL = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


@dataclass(frozen=True, slots=True)
class _Verified:
    """Outcome of the CPU-bound checks: a matched TOTP step, or why not."""

    user_id: uuid.UUID | None
    step: int | None
    reason: str | None  # None = password and code both right
    rehashed: str | None = None  # a new hash at today's cost, when the stored one is older


async def _verify(settings: Settings, kdf: KdfQueue, user: User | None, attempt: LoginAttempt) -> _Verified:
    if user is None:
        await kdf.run(verify_dummy, attempt.password)
        return _Verified(None, None, "unknown_email")
    if not await kdf.run(verify_password, attempt.password, user.password_hash):
        return _Verified(user.id, None, "bad_password")
    secret = decrypt_secret(mfa_cipher(settings), user.totp_secret_encrypted)
    step = matched_step(secret, attempt.totp_code.replace(" ", ""))
    if step is None:
        return _Verified(user.id, None, "bad_code")
    # Transparent upgrade: the only moment the plain password is at hand, and only once both
    # factors passed (a wrong code costs no second derivation).
    rehashed = await kdf.run(hash_password, attempt.password) if needs_rehash(user.password_hash) else None
    return _Verified(user.id, step, None, rehashed)


async def login(
    pool: Any,
    settings: Settings,
    attempt: LoginAttempt,
    *,
    kdf: KdfQueue,
    policy: LoginPolicy = DEFAULT_POLICY,
) -> LoginSuccess:
    """Authenticate and open a session; ``kdf`` is the process's hashing queue.

    Raises ``InvalidCredentials`` (401), ``LoginThrottled`` (429: ``locked``, ``rate_limited``, or
    ``busy`` when the hashing queue is full), ``ConfigError`` when ``MFA_ENCRYPTION_KEY`` is missing
    or invalid (before any other work).
    """
    mfa_cipher(settings)
    email = attempt.email.strip().lower()
    try:
        admission = kdf.admit(attempt.ip)
    except HashingQueueFull as exc:
        log_event("WARNING", "login_busy", ip=attempt.ip, code=exc.code, admitted=kdf.admitted)
        retry_after = exc.retry_after_seconds
        raise LoginThrottled(exc.message, code=exc.code, retry_after_seconds=retry_after) from None
    with admission:
        async with pool.acquire() as conn:
            reservation = await _reserve(conn, email, attempt.ip, policy)
        verified = await _verify(settings, kdf, reservation.user, attempt)
    async with pool.acquire() as conn:
        outcome = await _record(conn, settings, email, attempt, reservation.attempt_id, verified, policy)
    if isinstance(outcome, LoginThrottled):
        raise outcome
    if isinstance(outcome, LoginSuccess):
        log_event(
            "INFO",
            "login_succeeded",
            user_id=str(outcome.user_id),
            session_id=str(outcome.session.session_id),
        )
        return outcome
    log_event(
        "WARNING", "login_failed", user_id=str(verified.user_id) if verified.user_id else None, reason=outcome
    )
    raise InvalidCredentials()


async def _record(
    conn: Conn,
    settings: Settings,
    email: str,
    attempt: LoginAttempt,
    attempt_id: int,
    verified: _Verified,
    policy: LoginPolicy,
) -> LoginSuccess | str | LoginThrottled:
    """Phase 3, one transaction: the session or the failure (its reason), with audit rows; or the
    lock a concurrent failure set meanwhile (returned, not raised, so dropping the reservation
    commits: an attempt refused as locked is not recorded)."""
    async with conn.transaction():
        await fetchval(conn, "login_serialize_email", SERIALIZE_EMAIL, "fmhl_login:" + email)
        user = await get_user_by_email(conn, email)
        try:
            # Re-checked under the lock: a concurrent failure may have locked the account meanwhile.
            await _check_lock(conn, email, user, policy)
        except LoginThrottled as throttled:
            await execute(conn, "login_attempt_drop", DROP_ATTEMPT, attempt_id)
            return throttled
        reason = await _refusal(conn, user, verified)
        if user is not None and reason is None:
            if verified.rehashed is not None:
                await _store_rehash(conn, user, verified.rehashed)
            return await _succeed(conn, settings, user, attempt, attempt_id)
        await _fail(conn, email, user, attempt, attempt_id, reason or "unknown", policy)
        return reason or "unknown"


async def _refusal(conn: Conn, user: User | None, verified: _Verified) -> str | None:
    """Why the attempt fails, or None once its TOTP step is claimed (the attempt succeeds)."""
    if verified.reason is not None:
        return verified.reason
    if user is None or user.id != verified.user_id or verified.step is None:
        return "account_changed"  # deleted or re-created between the checks and now
    if user.disabled_at is not None:
        return "disabled"
    if not await claim_totp_step(conn, user.id, verified.step):
        return "replayed_code"
    return None


async def _store_rehash(conn: Conn, user: User, new_hash: str) -> None:
    if await replace_password_hash(conn, user.id, user.password_hash, new_hash):
        old_parameters = "$".join(user.password_hash.split("$")[:4])
        log_event("INFO", "password_rehashed", user_id=str(user.id), old_parameters=old_parameters)


async def _succeed(
    conn: Conn, settings: Settings, user: User, attempt: LoginAttempt, attempt_id: int
) -> LoginSuccess:
    session = await create_session(
        conn,
        user_id=user.id,
        ttl_seconds=settings.session_ttl_seconds,
        ip=attempt.ip,
        user_agent=attempt.user_agent,
    )
    await execute(conn, "login_attempt_resolve", RESOLVE_ATTEMPT, attempt_id, True, user.id)
    await audit.record(
        conn,
        actor=user.email,
        actor_user_id=user.id,
        action="auth.login",
        target_type="session",
        target_id=str(session.session_id),
        metadata={"role": user.role, "expires_at": session.expires_at.isoformat()},
        ip=attempt.ip,
    )
    return LoginSuccess(user.id, user.email, user.role, session)


async def _fail(
    conn: Conn,
    email: str,
    user: User | None,
    attempt: LoginAttempt,
    attempt_id: int,
    reason: str,
    policy: LoginPolicy,
) -> None:
    user_id = user.id if user is not None else None
    await execute(conn, "login_attempt_resolve", RESOLVE_ATTEMPT, attempt_id, False, user_id)
    metadata: dict[str, Any] = {"email": email, "reason": reason}
    if user is not None:
        failures = await fetchval(
            conn, "login_account_failures", ACCOUNT_FAILURES, user.id, float(policy.account_window_seconds)
        )
        metadata["failures_in_window"] = failures
        if failures >= policy.max_failures_per_account:
            locked_until = await lock_account(conn, user.id, policy.lock_seconds)
            metadata["locked_until"] = locked_until.isoformat()
    await audit.record(
        conn,
        actor="anonymous",
        action="auth.login_failed",
        target_type="user" if user is not None else None,
        target_id=str(user.id) if user is not None else None,
        metadata=metadata,
        ip=attempt.ip,
    )


async def logout(
    conn: Conn, *, session_id: uuid.UUID, user_id: uuid.UUID, email: str, ip: str | None
) -> bool:
    """Revoke one session and audit it; False (and no audit row) if it was already revoked."""
    async with conn.transaction():
        if not await revoke_session(conn, session_id):
            return False
        await audit.record(
            conn,
            actor=email,
            actor_user_id=user_id,
            action="auth.logout",
            target_type="session",
            target_id=str(session_id),
            ip=ip,
        )
    log_event("INFO", "logout", user_id=str(user_id), session_id=str(session_id))
    return True

"""``/api/v1/auth/login``, ``/api/v1/auth/logout`` and ``/api/v1/admin/whoami``.

Thin: the contract decodes the JSON body (``LoginBody``), ``shared.auth.login`` decides, the answer
is typed. A body that is not a JSON object with string ``email``, ``password`` and ``totp_code``
(and nothing else) is a 400 ``invalid_request``; wrong values are one 401 ``invalid_credentials``;
throttling (lockout, per-IP limit, a full hashing queue) is a 429 with ``Retry-After``. A server
without a usable ``MFA_ENCRYPTION_KEY`` answers 503 and logs the configuration error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from msgspec import Meta, Struct
from starlette.responses import Response

from service.contract import Call, NoBody, NoContent, NoParams, operation
from service.errors import error_response
from shared.auth.login import LoginAttempt, LoginThrottled, login, logout
from shared.auth.passwords import MAX_PASSWORD_LENGTH
from shared.auth.roles import Role
from shared.auth.users import MAX_EMAIL_LENGTH
from shared.infra.config import ConfigError
from shared.infra.logs import log_event
from shared.infra.timefmt import UtcDatetime

MAX_TOTP_CODE_LENGTH = 16
UNAUTHENTICATED = "missing, malformed, unknown, expired or revoked bearer token (`unauthenticated`)"


class LoginBody(Struct, forbid_unknown_fields=True):
    email: Annotated[str, Meta(min_length=1, max_length=MAX_EMAIL_LENGTH)]
    password: Annotated[str, Meta(min_length=1, max_length=MAX_PASSWORD_LENGTH)]
    totp_code: Annotated[
        str,
        Meta(
            min_length=1, max_length=MAX_TOTP_CODE_LENGTH, description="6 digits from the authenticator app"
        ),
    ]


@dataclass(frozen=True, slots=True)
class SessionOpened:
    token: Annotated[str, Meta(description="send as `Bearer <token>`")]
    expires_at: UtcDatetime


@dataclass(frozen=True, slots=True)
class Caller:
    email: str
    role: Role


@operation(
    "POST",
    "/api/v1/auth/login",
    params=NoParams,
    body=LoginBody,
    response=SessionOpened,
    operation_id="login",
    summary="Log in with password and TOTP code; returns an opaque bearer token",
    description=(
        "One generic 401 `invalid_credentials` for a wrong email, password or code; a TOTP "
        "code is accepted once. 5 failures within 15 minutes lock the account for 15 minutes "
        "(429 `locked`, even for correct credentials); 20 failures from one client IP within "
        "15 minutes → 429 `rate_limited`. A login is refused at once, before any password "
        "hashing, when its address already has a login in progress (429 `rate_limited`) or "
        "the server's hashing queue is full (429 `busy`). 429 responses carry `Retry-After`."
    ),
    response_description="session opened",
    headers={"Cache-Control": "no-store"},
    tags=("auth",),
    auth="public",
    errors=(400, 401, 413, 429, 503),
    error_descriptions={
        400: "body is not a JSON object with string email, password and totp_code",
        401: "`invalid_credentials`",
        413: "body over 1 MiB (`payload_too_large`)",
        429: "`locked` (account), `rate_limited` (client IP) or `busy` (hashing queue)",
        503: "database unavailable or MFA not configured",
    },
)
async def login_endpoint(call: Call[NoParams, LoginBody]) -> SessionOpened | Response:
    attempt = LoginAttempt(
        email=call.body.email,
        password=call.body.password,
        totp_code=call.body.totp_code,
        ip=call.ip,
        user_agent=call.request.headers.get("user-agent"),
    )
    state = call.state
    try:
        result = await login(state.db.pool, state.settings, attempt, kdf=state.kdf)
    except LoginThrottled as exc:
        return error_response(429, exc.code, exc.message, {"Retry-After": str(exc.retry_after_seconds)})
    except ConfigError as exc:
        log_event("ERROR", "login_unconfigured", error_message=str(exc))
        return error_response(503, "unavailable", "login is not configured on this server")
    return SessionOpened(result.session.token, result.session.expires_at.replace(microsecond=0))


@operation("POST", "/api/v1/auth/logout", params=NoParams, body=NoBody, response=NoContent, status=204,
           operation_id="logout", summary="Revoke the session of the bearer token",
           response_description="session revoked", tags=("auth",), auth="session", errors=(401, 503),
           error_descriptions={401: UNAUTHENTICATED, 503: "database unavailable"})  # fmt: skip
async def logout_endpoint(call: Call[NoParams, NoBody]) -> NoContent:
    principal = call.principal
    async with call.state.db.pool.acquire() as conn:
        await logout(
            conn,
            session_id=principal.session_id,
            user_id=principal.user_id,
            email=principal.email,
            ip=call.ip,
        )
    return NoContent()


@operation(
    "GET",
    "/api/v1/admin/whoami",
    params=NoParams,
    body=NoBody,
    response=Caller,
    operation_id="whoami",
    summary="The admin behind the bearer token",
    response_description="the caller",
    tags=("admin",),
    auth="admin",
    errors=(401, 403, 503),
    error_descriptions={
        401: UNAUTHENTICATED,
        403: "the user is not an admin (`forbidden`)",
        503: "database unavailable",
    },
)
async def whoami(call: Call[NoParams, NoBody]) -> Caller:
    return Caller(call.principal.email, call.principal.role)


OPERATIONS = [login_endpoint, logout_endpoint, whoami]

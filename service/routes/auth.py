"""``/api/v1/auth/login``, ``/api/v1/auth/logout`` and ``/api/v1/admin/whoami``.

Thin: validate the JSON body, call ``shared.auth.login``, shape the answer. A body that is not a JSON
object with string ``email``, ``password`` and ``totp_code`` is a 400 ``invalid_request``; wrong
values are one 401 ``invalid_credentials``; throttling (lockout, per-IP limit, a full hashing queue)
is a 429 with ``Retry-After``. A server
without a usable ``MFA_ENCRYPTION_KEY`` answers 503 and logs the configuration error.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.errors import error_response
from service.guard import Principal, admin_endpoint, authenticate
from service.state import app_state
from service.validation import client_ip, json_object
from shared.auth.login import LoginAttempt, LoginThrottled, login, logout
from shared.auth.passwords import MAX_PASSWORD_LENGTH
from shared.auth.users import MAX_EMAIL_LENGTH
from shared.infra.config import ConfigError
from shared.infra.errors import Invalid
from shared.infra.logs import log_event
from shared.infra.timefmt import iso_utc

MAX_TOTP_CODE_LENGTH = 16


def _required_string(data: dict[str, Any], name: str, max_length: int) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise Invalid(f"{name} is required and must be a non-empty string")
    if len(value) > max_length:
        raise Invalid(f"{name} must be at most {max_length} characters")
    return value


async def login_endpoint(request: Request) -> Response:
    data = await json_object(request)
    attempt = LoginAttempt(
        email=_required_string(data, "email", MAX_EMAIL_LENGTH),
        password=_required_string(data, "password", MAX_PASSWORD_LENGTH),
        totp_code=_required_string(data, "totp_code", MAX_TOTP_CODE_LENGTH),
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    state = app_state(request)
    try:
        result = await login(state.db.pool, state.settings, attempt, kdf=state.kdf)
    except LoginThrottled as exc:
        return error_response(429, exc.code, exc.message, {"Retry-After": str(exc.retry_after_seconds)})
    except ConfigError as exc:
        log_event("ERROR", "login_unconfigured", error_message=str(exc))
        return error_response(503, "unavailable", "login is not configured on this server")
    return JSONResponse(
        {"token": result.session.token, "expires_at": iso_utc(result.session.expires_at, "seconds")},
        headers={"Cache-Control": "no-store"},
    )


async def logout_endpoint(request: Request) -> Response:
    principal = await authenticate(request)
    async with app_state(request).db.pool.acquire() as conn:
        await logout(
            conn,
            session_id=principal.session_id,
            user_id=principal.user_id,
            email=principal.email,
            ip=client_ip(request),
        )
    return Response(status_code=204)


async def whoami(request: Request, principal: Principal) -> Response:
    return JSONResponse({"email": principal.email, "role": principal.role})


ROUTES = [
    Route("/api/v1/auth/login", login_endpoint, methods=["POST"]),
    Route("/api/v1/auth/logout", logout_endpoint, methods=["POST"]),
    Route("/api/v1/admin/whoami", admin_endpoint(whoami), methods=["GET"]),
]


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_UNAUTHENTICATED = _error("missing, malformed, unknown, expired or revoked bearer token (`unauthenticated`)")

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/auth/login": {
        "post": {
            "operationId": "login",
            "summary": "Log in with password and TOTP code; returns an opaque bearer token",
            "description": (
                "One generic 401 `invalid_credentials` for a wrong email, password or code; a TOTP "
                "code is accepted once. 5 failures within 15 minutes lock the account for 15 minutes "
                "(429 `locked`, even for correct credentials); 20 failures from one client IP within "
                "15 minutes → 429 `rate_limited`. A login is refused at once, before any password "
                "hashing, when its address already has a login in progress (429 `rate_limited`) or "
                "the server's hashing queue is full (429 `busy`). 429 responses carry `Retry-After`."
            ),
            "tags": ["auth"],
            "security": [],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["email", "password", "totp_code"],
                            "properties": {
                                "email": {"type": "string", "minLength": 1, "maxLength": MAX_EMAIL_LENGTH},
                                "password": {
                                    "type": "string",
                                    "minLength": 1,
                                    "maxLength": MAX_PASSWORD_LENGTH,
                                },
                                "totp_code": {
                                    "type": "string",
                                    "minLength": 1,
                                    "maxLength": MAX_TOTP_CODE_LENGTH,
                                    "description": "6 digits from the authenticator app",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "session opened",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["token", "expires_at"],
                                "properties": {
                                    "token": {"type": "string", "description": "send as `Bearer <token>`"},
                                    "expires_at": {"type": "string", "format": "date-time"},
                                },
                            }
                        }
                    },
                },
                "400": _error("body is not a JSON object with string email, password and totp_code"),
                "413": _error("body over 1 MiB (`payload_too_large`)"),
                "401": _error("`invalid_credentials`"),
                "429": _error("`locked` (account), `rate_limited` (client IP) or `busy` (hashing queue)"),
                "503": _error("database unavailable or MFA not configured"),
            },
        }
    },
    "/api/v1/auth/logout": {
        "post": {
            "operationId": "logout",
            "summary": "Revoke the session of the bearer token",
            "tags": ["auth"],
            "security": [{"bearer": []}],
            "responses": {
                "204": {"description": "session revoked"},
                "401": _UNAUTHENTICATED,
                "503": _error("database unavailable"),
            },
        }
    },
    "/api/v1/admin/whoami": {
        "get": {
            "operationId": "whoami",
            "summary": "The admin behind the bearer token",
            "tags": ["admin"],
            "security": [{"bearer": []}],
            "responses": {
                "200": {
                    "description": "the caller",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["email", "role"],
                                "properties": {
                                    "email": {"type": "string"},
                                    "role": {"type": "string", "enum": ["admin", "support"]},
                                },
                            }
                        }
                    },
                },
                "401": _UNAUTHENTICATED,
                "403": _error("the user is not an admin (`forbidden`)"),
                "503": _error("database unavailable"),
            },
        }
    },
}

"""One JSON error shape for every failure: ``{"error": {"code", "message"}}``.

Domain errors from ``shared`` map to statuses here; Starlette's HTTP errors (404, 405, 413) get
stable codes. Unexpected errors become a generic 500 in the middleware (no trace or SQL in it).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from shared.infra import errors
from shared.infra.logs import log_event

STATUS_BY_ERROR: dict[type[errors.DomainError], int] = {
    errors.Invalid: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.RateLimited: 429,
    errors.Busy: 503,
    errors.DependencyUnavailable: 503,
}

CODE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ErrorDetail(msgspec.Struct):
    code: str  # stable snake_case
    message: str  # a human sentence; never a trace or SQL


class Error(msgspec.Struct):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = msgspec.json.encode(Error(ErrorDetail(code, message)))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.DomainError)
    status = next((s for cls, s in STATUS_BY_ERROR.items() if isinstance(exc, cls)), 400)
    headers = {"Retry-After": "5"} if status == 503 else None
    return error_response(status, exc.code, exc.message, headers)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = CODE_BY_STATUS.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else code.replace("_", " ")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


# A database or Redis that is down, restarting or hung is an outage, not a bug: 503 with
# Retry-After, never 500 (tests/reliability/test_faults.py found 500s from routes that reach
# Postgres directly: ConnectionRefusedError from the pool, TimeoutError from a hung server).
UNREACHABLE_DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, ...
    TimeoutError,  # asyncpg's command timeout, redis-py's socket timeout
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # 57P0x: shutting down, starting up
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,  # only a closed connection; see handle_unreachable_dependency
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


async def handle_unreachable_dependency(request: Request, exc: Exception) -> Response:
    if isinstance(exc, asyncpg.InterfaceError) and "closed" not in str(exc):
        raise exc  # a misuse of the driver is a bug: the middleware's 500
    dependency = "redis" if isinstance(exc, redis.exceptions.RedisError) else "postgres"
    if isinstance(exc, OSError | TimeoutError):
        dependency = "a backend"
    log_event("WARNING", "dependency_unavailable", dependency=dependency, error_type=type(exc).__name__)
    return error_response(
        503, "dependency_unavailable", f"{dependency} is unavailable; try again", {"Retry-After": "5"}
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    errors.DomainError: handle_domain_error,
    HTTPException: handle_http_exception,
    **dict.fromkeys(UNREACHABLE_DEPENDENCY_ERRORS, handle_unreachable_dependency),
}
# Unexpected exceptions are caught by service.middleware.RequestContextMiddleware, inside the
# request context, so their log line carries the request id.

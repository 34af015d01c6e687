"""The wrapper every console page and action goes through: session, CSRF, role, failure pages.

Order on each request: find the live session behind the cookie (none → the sign-in page);
for a POST, check the CSRF token (403), then the role (``support`` → 403: it sees every page and
changes nothing); run the handler. Failures render as pages, never as a trace or a bare 500:
a body over 1 MiB → 413; a dependency that cannot be reached → 503 naming it, with the
readiness checks; a domain error → its status with its message; anything else → a generic 500
page with the request id (the exception is logged once, with its stack, like the API's).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import asyncpg
from loguru import logger
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.console.render import redirect, render
from service.console.security import (
    CSRF_FIELD,
    ConsoleUser,
    csrf_key,
    csrf_matches,
    csrf_token,
    secure_headers,
    session_token,
)
from service.guard import client_ip
from service.middleware import PayloadTooLarge
from service.readiness import readiness
from service.state import AppState, app_state
from shared.auth.sessions import find_console_session
from shared.dlq.redrive import Actor
from shared.infra import errors

Handler = Callable[[Request, ConsoleUser], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]

SESSION_LOOKUP_TIMEOUT_SECONDS = 5.0
# Requests a page makes by itself (the overview's 5 s refresh): they do not keep a session alive.
AUTOMATIC_REQUESTS = frozenset({"/console/live"})
PAGE_TIMEOUT_SECONDS = 20.0
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    errors.DependencyUnavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)
STATUS_BY_ERROR: tuple[tuple[type[errors.DomainError], int, str], ...] = (
    (errors.Invalid, 400, "Invalid request"),
    (errors.NotFound, 404, "Not found"),
    (errors.Conflict, 409, "Nothing to do"),
    (errors.Forbidden, 403, "Forbidden"),
    (errors.RateLimited, 429, "Too many attempts"),
    (errors.Busy, 503, "Busy"),
)


def is_dependency_error(exc: BaseException) -> bool:
    return isinstance(exc, DEPENDENCY_ERRORS) or type(exc).__module__.startswith("redis")


async def current_user(request: Request, state: AppState) -> ConsoleUser | None:
    token = session_token(request)
    if token is None:
        return None
    async with asyncio.timeout(SESSION_LOOKUP_TIMEOUT_SECONDS):
        async with state.db.pool.acquire() as conn:
            session = await find_console_session(
                conn,
                token,
                idle_timeout_seconds=state.settings.console_idle_timeout_seconds,
                activity=request.url.path not in AUTOMATIC_REQUESTS,
            )
    if session is None:
        return None
    return ConsoleUser(
        user_id=session.user_id,
        email=session.email,
        role=session.role,
        session_id=session.session_id,
        csrf_token=csrf_token(token, csrf_key(state.settings.mfa_encryption_key)),
    )


def actor(request: Request, user: ConsoleUser) -> Actor:
    return Actor(name=user.email, user_id=user.user_id, ip=client_ip(request))


def sign_in_redirect(request: Request) -> Response:
    if request.headers.get("hx-request") == "true":
        # An htmx refresh (the overview's live fragment) of an expired session: have htmx load
        # the sign-in page as a whole page instead of swapping it into the fragment.
        return secure_headers(
            Response(status_code=200, headers={"HX-Redirect": "/console/sign-in?next=%2Fconsole"})
        )
    target = request.url.path if request.method == "GET" else "/console"
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    return redirect("/console/sign-in?next=" + quote(target, safe=""))


async def unavailable_page(
    request: Request, exc: BaseException, user: ConsoleUser | None, *, partial: bool = False
) -> Response:
    """503 saying which dependency is down, with the readiness checks (never the exception)."""
    state = app_state(request)
    _, health = await readiness(state)
    checks = health.checks or {}
    down = [
        name.split(":")[0]
        for name in ("postgres:responseTime", "redis:responseTime")
        if checks[name][0].status == "fail"
    ]
    named = getattr(exc, "dependency", None)
    if named and named not in down:
        down.insert(0, named)
    logger.bind(
        event="console_dependency_unavailable", dependencies=down, error_type=type(exc).__name__
    ).warning("console_dependency_unavailable")
    return render(
        request,
        "_unavailable.html" if partial else "unavailable.html",
        {"down": down, "health": health, "poll": partial},
        user=user,
        status=200 if partial else 503,
    )


def error_page(request: Request, status: int, title: str, message: str, user: ConsoleUser | None) -> Response:
    return render(request, "error.html", {"title": title, "message": message}, user=user, status=status)


def too_large_page(request: Request, user: ConsoleUser | None = None) -> Response:
    """413 for a form body over the limit that came without a Content-Length (chunked): the
    request-context middleware stops it mid-read, here, inside the console's own app."""
    return error_page(request, 413, "Request too large", "The form is larger than 1 MiB.", user)


async def handle_failure(request: Request, exc: Exception, user: ConsoleUser | None) -> Response:
    if isinstance(exc, PayloadTooLarge):
        return too_large_page(request, user)
    if is_dependency_error(exc):
        return await unavailable_page(request, exc, user)
    if isinstance(exc, HTTPException):  # e.g. a malformed form body (400) from Starlette's parser
        message = (
            exc.detail if isinstance(exc.detail, str) and exc.detail else "The request was not accepted."
        )
        return error_page(request, exc.status_code, "Request refused", message, user)
    if isinstance(exc, errors.DomainError):
        for cls, status, title in STATUS_BY_ERROR:
            if isinstance(exc, cls):
                return error_page(request, status, title, exc.message, user)
        return error_page(request, 400, "Invalid request", exc.message, user)
    logger.opt(exception=exc).bind(event="unhandled_exception", route=request.url.path).error(
        "unhandled exception"
    )
    return error_page(
        request, 500, "Something went wrong", "The error was logged. Quote the request id below.", user
    )


def console_view(handler: Handler, *, action: bool = False) -> Endpoint:
    """Wrap a page (GET) or an action (POST, ``action=True``: admin only) of the console."""

    async def endpoint(request: Request) -> Response:
        state = app_state(request)
        user: ConsoleUser | None = None
        try:
            user = await current_user(request, state)
            if user is None:
                return sign_in_redirect(request)
            if request.method == "POST":
                form = await request.form()
                if not csrf_matches(user.csrf_token, form.get(CSRF_FIELD)):
                    return error_page(
                        request, 403, "Forbidden", "The form was stale or forged (CSRF check failed).", user
                    )
                if action and not user.can_act:
                    return error_page(request, 403, "Forbidden", "Your role can view but not change.", user)
            async with asyncio.timeout(PAGE_TIMEOUT_SECONDS):
                return await handler(request, user)
        except Exception as exc:
            return await handle_failure(request, exc, user)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def parse_uuid_param(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise errors.Invalid("not a valid id") from exc

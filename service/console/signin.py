"""Sign-in and sign-out: the API's login use case (``shared.auth.login``) behind an HTML form.

Same lockout, IP limit, TOTP replay guard, generic error and audit rows as
``POST /api/v1/auth/login``; the token it returns goes into the session cookie instead of a JSON
body. Sign-out revokes the session (audited) and clears the cookie: the old cookie, replayed,
finds no live session and gets the sign-in page.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from service.console.render import redirect, render
from service.console.security import (
    SIGNIN_COOKIE,
    ConsoleUser,
    clear_session_cookie,
    csrf_matches,
    new_signin_token,
    set_session_cookie,
    set_signin_cookie,
)
from service.console.views import current_user, error_page, handle_failure
from service.guard import client_ip
from service.state import app_state
from shared.auth.login import InvalidCredentials, LoginAttempt, LoginThrottled, login, logout
from shared.auth.passwords import MAX_PASSWORD_LENGTH
from shared.auth.users import MAX_EMAIL_LENGTH
from shared.infra.config import ConfigError
from shared.infra.logs import log_event

MAX_CODE_LENGTH = 16


def _safe_next(raw: object) -> str:
    """Only a path inside the console (no scheme, no host, no ``//``): no open redirect."""
    if isinstance(raw, str) and raw.startswith("/console") and "//" not in raw and "\\" not in raw:
        return raw[:1000]
    return "/console"


def _form_page(
    request: Request, *, next_url: str, email: str = "", error: str | None = None, status: int = 200
) -> Response:
    token = new_signin_token()
    response = render(
        request,
        "sign_in.html",
        {"signin_token": token, "next_url": next_url, "email": email, "error": error},
        status=status,
    )
    set_signin_cookie(
        response, request, token, allow_insecure=app_state(request).settings.console_insecure_cookies
    )
    return response


async def sign_in_form(request: Request) -> Response:
    next_url = _safe_next(request.query_params.get("next"))
    if await _signed_in(request) is not None:
        return redirect(next_url)
    return _form_page(request, next_url=next_url)


def _field(form: FormData, name: str, max_length: int) -> str:
    """The field as text, cut just past its limit so an overlong value is refused before any work."""
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    return value[: max_length + 1]


async def sign_in(request: Request) -> Response:
    form = await request.form()
    next_url = _safe_next(form.get("next"))
    cookie = request.cookies.get(SIGNIN_COOKIE)
    if cookie is None or not csrf_matches(cookie, form.get("signin_token")):
        return _form_page(
            request,
            next_url=next_url,
            error="The sign-in form expired. Please try again.",
            status=403,
        )
    email = _field(form, "email", MAX_EMAIL_LENGTH)
    password = _field(form, "password", MAX_PASSWORD_LENGTH)
    code = _field(form, "totp_code", MAX_CODE_LENGTH)
    if not email or not password or not code:
        return _form_page(
            request,
            next_url=next_url,
            email=email,
            error="Email, password and code are required.",
            status=400,
        )
    if len(email) > MAX_EMAIL_LENGTH or len(password) > MAX_PASSWORD_LENGTH or len(code) > MAX_CODE_LENGTH:
        return _form_page(request, next_url=next_url, error="A field is too long.", status=400)
    state = app_state(request)
    attempt = LoginAttempt(
        email=email,
        password=password,
        totp_code=code,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    try:
        result = await login(state.db.pool, state.settings, attempt, kdf=state.kdf)
    except InvalidCredentials:
        return _form_page(
            request, next_url=next_url, email=email, error="Invalid email, password or code.", status=401
        )
    except LoginThrottled as exc:
        response = _form_page(request, next_url=next_url, email=email, error=exc.message, status=429)
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
        return response
    except ConfigError as exc:
        log_event("ERROR", "login_unconfigured", error_message=str(exc))
        return error_page(
            request, 503, "Sign-in unavailable", "Login is not configured on this server.", None
        )
    except Exception as exc:
        return await handle_failure(request, exc, None)
    response = redirect(next_url)
    set_session_cookie(
        response,
        request,
        result.session.token,
        state.settings.session_ttl_seconds,
        allow_insecure=state.settings.console_insecure_cookies,
    )
    response.delete_cookie(SIGNIN_COOKIE, path="/console/sign-in")
    return response


async def sign_out(request: Request, user: ConsoleUser) -> Response:
    async with app_state(request).db.pool.acquire() as conn:
        await logout(
            conn, session_id=user.session_id, user_id=user.user_id, email=user.email, ip=client_ip(request)
        )
    response = redirect("/console/sign-in")
    clear_session_cookie(
        response, request, allow_insecure=app_state(request).settings.console_insecure_cookies
    )
    return response


async def _signed_in(request: Request) -> ConsoleUser | None:
    """The live session's user, if any; a database that cannot be asked means "show the form"."""
    try:
        return await current_user(request, app_state(request))
    except Exception:
        return None

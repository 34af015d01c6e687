"""Console security: the session cookie, CSRF tokens and the response headers of every page.

* Session: the cookie holds the same opaque token an API login returns (``shared.auth.login``
  opens an ``admin_sessions`` row storing only its SHA-256), so lockout, TOTP replay guard,
  expiry, revocation and audit are the API's; besides the absolute expiry a console session dies
  after ``CONSOLE_IDLE_TIMEOUT_SECONDS`` (1800) without use (``shared.auth.sessions``).
  ``HttpOnly``, ``SameSite=Strict``, ``Path=/`` and ``Secure`` — except when
  ``CONSOLE_INSECURE_COOKIES=1`` is set explicitly (``fmhl-ops dev`` sets it) *and* the request
  itself arrived over plain HTTP on a loopback host (``127.0.0.1``, ``::1``, ``localhost``),
  where a Secure cookie would never be sent back. Both are needed: a proxy on the same host may
  well forward with ``Host: 127.0.0.1``, so the request alone must not decide. Anywhere else the
  cookie is Secure, so a deployment behind a TLS ingress works unchanged (the browser sees https).
* CSRF: every form of a signed-in page carries ``csrf_token`` = HMAC-SHA256 of the session's
  token hash under a server key (derived from ``MFA_ENCRYPTION_KEY``). Nothing to store, bound
  to the session, useless after sign-out; checked on every POST before anything else happens.
  The sign-in form, which has no session yet, uses a double-submit token: a random value in a
  short-lived ``SameSite=Strict`` cookie that the form must echo.
* Headers: a CSP with no inline script (``script-src 'self'``), ``frame-ancestors 'none'``,
  ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from shared.auth.sessions import hash_token, is_well_formed_token

SESSION_COOKIE = "fmhl_console"
SIGNIN_COOKIE = "fmhl_console_signin"
CSRF_FIELD = "csrf_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Swagger UI sets style attributes from its scripts; its scripts stay 'self' only.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    user_id: uuid.UUID
    email: str
    role: str
    session_id: uuid.UUID
    csrf_token: str

    @property
    def can_act(self) -> bool:
        """Only admins change anything; ``support`` sees every page and no action control."""
        return self.role == "admin"


def csrf_key(seed: str | None) -> bytes:
    return hashlib.sha256(b"fmhl-console-csrf:" + (seed or "fmhl-dev-only").encode()).digest()


def csrf_token(session_token: str, key: bytes) -> str:
    mac = hmac.new(key, b"session:" + hash_token(session_token), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def csrf_matches(expected: str, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def session_token(request: Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    return token if token is not None and is_well_formed_token(token) else None


def is_plain_http_loopback(request: Request) -> bool:
    return request.url.scheme == "http" and (request.url.hostname or "") in LOOPBACK_HOSTS


def cookie_secure(request: Request, *, allow_insecure: bool) -> bool:
    return not (allow_insecure and is_plain_http_loopback(request))


def set_session_cookie(
    response: Response, request: Request, token: str, max_age: int, *, allow_insecure: bool
) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, allow_insecure=allow_insecure),
    )


def clear_session_cookie(response: Response, request: Request, *, allow_insecure: bool) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, allow_insecure=allow_insecure),
    )


def new_signin_token() -> str:
    return secrets.token_urlsafe(32)


def set_signin_cookie(response: Response, request: Request, value: str, *, allow_insecure: bool) -> None:
    response.set_cookie(
        SIGNIN_COOKIE,
        value,
        max_age=3600,
        path="/console/sign-in",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, allow_insecure=allow_insecure),
    )


def secure_headers(response: Response, *, csp: str = CONSOLE_CSP) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response

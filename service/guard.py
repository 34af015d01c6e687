"""The guard that runs before every ``/api/v1/admin/*`` route (and logout).

Routes do not call it themselves: an operation declared with ``auth="admin"`` (or ``"session"``)
in ``service/contract.py`` runs ``require_admin`` (or ``authenticate``) before reading any input.

Every request re-reads its session joined with its user (one indexed query), so a revoked
session, an expired one or a disabled user stops working at once. Failures are domain errors
that ``service/errors.py`` renders in the JSON error shape:

* no ``Authorization`` header, not ``Bearer <token>``, a token of the wrong shape, an unknown,
  expired or revoked token, a disabled user → 401 ``unauthenticated`` (one message for all, so
  the answer does not tell a caller which case they hit);
* a live session whose user is not allowed (``support`` on an admin route) → 403 ``forbidden``.

Every admin API route uses ``require_admin``: ``support`` users get 403 there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from starlette.requests import Request

from service.state import app_state
from shared.auth.roles import Role
from shared.auth.sessions import find_live_session, is_well_formed_token
from shared.infra.errors import Forbidden, Unauthenticated

_UNAUTHENTICATED = "a valid bearer token of a live admin session is required"


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    email: str
    role: Role
    session_id: uuid.UUID


def client_ip(request: Request) -> str | None:
    """The caller's address as uvicorn resolved it (``FORWARDED_ALLOW_IPS`` behind a proxy)."""
    return request.client.host if request.client else None


def bearer_token(request: Request) -> str:
    """The token of ``Authorization: Bearer <token>``; ``Unauthenticated`` if absent or malformed."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not is_well_formed_token(token):
        raise Unauthenticated(_UNAUTHENTICATED)
    return token


async def authenticate(request: Request) -> Principal:
    """The principal of a live, MFA-passed session of an enabled user, whatever the role."""
    token = bearer_token(request)
    async with app_state(request).db.pool.acquire() as conn:
        session = await find_live_session(conn, token)
    if session is None:
        raise Unauthenticated(_UNAUTHENTICATED)
    principal = Principal(session.user_id, session.email, session.role, session.session_id)
    request.state.principal = principal
    return principal


async def require_admin(request: Request) -> Principal:
    """A live session of an ``admin``: 401 without one, 403 for any other role."""
    principal = await authenticate(request)
    if principal.role != "admin":
        raise Forbidden("this route requires the admin role")
    return principal

"""Issue 16 §2, in-process: ``nosniff`` on every response, 413 (not 500) for a chunked console form
over 1 MiB, the console's idle timeout and the main port's connection cap. The real-process parts
(login burst, request-head deadline) are in ``tests/e2e/test_serve_hardening.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from loguru import logger
from starlette.applications import Starlette
from starlette.responses import Response

from service.console.security import SESSION_COOKIE, SIGNIN_COOKIE
from shared.auth.sessions import hash_token
from shared.infra.config import ConfigError, Settings, load_settings
from shared.infra.http_server import (
    MainPortProtocol,
    bound_port,
    build_uvicorn,
    probe_app,
    start_side_server,
    stop_side_server,
)
from tests.factories import create_admin, create_admin_session, create_dlq_entry
from tests.helpers import running_app

MIB = 1024 * 1024


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, mfa_encryption_key=Fernet.generate_key().decode(), console_insecure_cookies=True
    )


@pytest.fixture
async def app_client(keyed: Settings, clean_db: Any) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with running_app(keyed) as (app, client):
        yield app, client


@pytest.fixture
def error_lines() -> Iterator[list[dict[str, Any]]]:
    """Every log record at WARNING or above, with whether it carries an exception (a stack)."""
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append({"event": record["extra"].get("event"), "exception": record["exception"] is not None})

    sink_id = logger.add(sink, level="WARNING")
    try:
        yield records
    finally:
        logger.remove(sink_id)


async def _chunked(total: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A form body with no Content-Length: httpx sends it as a chunked stream."""
    yield b"csrf_token=x&note="
    sent = 0
    while sent < total:
        yield b"a" * chunk
        sent += chunk


async def test_every_response_carries_nosniff(
    keyed: Settings, clean_db: Any, app_client: tuple[Starlette, httpx.AsyncClient]
) -> None:
    _, client = app_client
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    bearer = {"Authorization": f"Bearer {token}"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/health/live", {}),
        ("GET", "/health/ready", {}),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/api/v1/admin/queues", {}),  # 401
        ("GET", "/api/v1/admin/whoami", {"headers": bearer}),  # 200
        ("GET", "/api/v1/admin/queues/dlq/not-a-uuid", {"headers": bearer}),  # 400
        ("GET", "/no/such/path", {}),  # 404
        ("DELETE", "/health/live", {}),  # 405
        ("POST", "/api/v1/auth/login", {"content": b"x" * (MIB + 1)}),  # 413 by Content-Length
        ("POST", "/api/v1/auth/login", {"content": _chunked(MIB + 1)}),  # 413 mid-stream
        ("GET", "/console/sign-in", {}),
        ("GET", "/console", {}),  # redirect to sign-in
        ("GET", "/console/no-such-page", {}),
        ("GET", "/console/static/console.css", {}),
        ("GET", "/console/static/vendor/htmx-2.0.11/htmx.min.js", {}),
        ("GET", "/docs", {}),
    ]
    seen: dict[str, int] = {}
    for method, path, kwargs in requests:
        response = await client.request(method, path, **kwargs)
        seen[f"{method} {path}"] = response.status_code
        where = (method, path, response.status_code)
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], where
    statuses = set(seen.values())
    assert {200, 303, 400, 401, 404, 405, 413} <= statuses, seen

    async def metrics() -> Response:
        return Response(b"fmhl_up 1\n")

    side = httpx.AsyncClient(transport=httpx.ASGITransport(app=probe_app(metrics)), base_url="http://side")
    async with side:
        for path in ("/metrics", "/health/live", "/nope"):
            assert (await side.get(path)).headers.get("x-content-type-options") == "nosniff", path
    print(f"\nnosniff on {len(requests)} main-port responses {sorted(statuses)} and 3 side-port ones")


async def test_a_chunked_console_form_over_1_mib_is_413_not_500(
    keyed: Settings,
    clean_db: Any,
    app_client: tuple[Starlette, httpx.AsyncClient],
    error_lines: list[dict[str, Any]],
) -> None:
    _, client = app_client
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    entry_id = await create_dlq_entry(clean_db)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    # the sign-in form (no session yet: the form is read before anything else)
    client.cookies.set(SIGNIN_COOKIE, "t" * 43, path="/console/sign-in")
    sign_in = await client.post("/console/sign-in", content=_chunked(2 * MIB), headers=headers)
    # a signed-in action: the CSRF check reads the form first
    client.cookies.set(SESSION_COOKIE, token)
    resolve = f"/console/dlq/{entry_id}/resolve"
    action = await client.post(resolve, content=_chunked(2 * MIB), headers=headers)
    # and by Content-Length, which the middleware refuses before the console sees it
    declared = await client.post(resolve, content=b"a" * (MIB + 1), headers=headers)
    for name, response in (("sign-in", sign_in), ("action", action), ("declared", declared)):
        assert response.status_code == 413, (name, response.status_code, response.text[:300])
        assert response.headers["x-request-id"]
    assert "larger than 1 MiB" in sign_in.text and sign_in.headers["content-type"].startswith("text/html")
    assert not [r for r in error_lines if r["exception"] or r["event"] == "unhandled_exception"], error_lines
    resolved = await clean_db.fetchval("SELECT resolved_at FROM dead_letter_queue WHERE id = $1", entry_id)
    assert resolved is None
    print(f"\nchunked 2 MiB console forms -> {sign_in.status_code}, {action.status_code}; no stack logged")


async def _session_row(db: Any, token: str) -> Any:
    return await db.fetchrow(
        "SELECT revoked_at, now() - last_seen_at AS idle FROM admin_sessions WHERE token_hash = $1",
        hash_token(token),
    )


async def test_a_console_session_idle_past_the_timeout_is_over(
    keyed: Settings, clean_db: Any, app_client: tuple[Starlette, httpx.AsyncClient]
) -> None:
    _, client = app_client
    assert keyed.mfa_encryption_key and keyed.console_idle_timeout_seconds == 1800
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    client.cookies.set(SESSION_COOKIE, token)
    set_idle = (
        "UPDATE admin_sessions SET last_seen_at = now() - make_interval(secs => $2) WHERE token_hash = $1"
    )

    # 10 minutes idle: still signed in; the overview's automatic refresh does not count as use
    await clean_db.execute(set_idle, hash_token(token), 600.0)
    assert (await client.get("/console/live")).status_code == 200
    assert (await _session_row(clean_db, token))["idle"].total_seconds() >= 600
    # a page a person opened does, and resets the idle clock
    assert (await client.get("/console")).status_code == 200
    assert (await _session_row(clean_db, token))["idle"].total_seconds() < 60

    # past the idle timeout (well inside the absolute one): signed out, the session revoked
    await clean_db.execute(set_idle, hash_token(token), 1801.0)
    page = await client.get("/console/dlq")
    assert page.status_code == 303 and page.headers["location"].startswith("/console/sign-in")
    assert (await _session_row(clean_db, token))["revoked_at"] is not None
    live = await client.get("/console/live", headers={"HX-Request": "true"})
    assert live.headers.get("hx-redirect", "").startswith("/console/sign-in")
    # API bearer tokens keep only the absolute expiry
    api_token = await create_admin_session(clean_db, admin.user_id)
    await clean_db.execute(set_idle, hash_token(api_token), 7200.0)
    whoami = await client.get("/api/v1/admin/whoami", headers={"Authorization": f"Bearer {api_token}"})
    assert whoami.status_code == 200


def test_the_idle_timeout_setting_is_validated_at_start() -> None:
    assert load_settings({"CONSOLE_IDLE_TIMEOUT_SECONDS": "600"}).console_idle_timeout_seconds == 600
    assert load_settings({}).console_idle_timeout_seconds == 1800
    for bad in ("0", "-5", "soon"):
        with pytest.raises(ConfigError, match="CONSOLE_IDLE_TIMEOUT_SECONDS"):
            load_settings({"CONSOLE_IDLE_TIMEOUT_SECONDS": bad})


class _TinyCap(MainPortProtocol):
    max_connections = 5


async def test_the_main_port_closes_connections_over_its_cap() -> None:
    async def metrics() -> Response:
        return Response(b"fmhl_up 1\n")

    server = build_uvicorn(probe_app(metrics), "127.0.0.1", 0, lifespan="off", protocol=_TinyCap)
    task = await start_side_server(server)
    port = bound_port(server)
    held = []
    try:
        for _ in range(5):
            held.append(await asyncio.open_connection("127.0.0.1", port))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the sixth
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unanswered
        writer.close()
        _, first = held.pop(0)
        first.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:  # a place is free
            assert (await client.get("/health/live")).status_code == 200
    finally:
        for _, writer in held:
            writer.close()
        await stop_side_server(server, task)


async def test_a_full_hashing_queue_answers_429_at_once_on_the_api_and_the_console(
    keyed: Settings, clean_db: Any, app_client: tuple[Starlette, httpx.AsyncClient]
) -> None:
    """Deterministic: the queue's places are taken by hand, as a burst in progress would hold them."""
    app, client = app_client  # client address 203.0.113.7
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    kdf = app.state.ops.kdf
    body = {"email": admin.email, "password": admin.password, "totp_code": admin.code_now()}

    # the form's double-submit token (the cookie the form page sets is Secure: not sent over http here)
    client.cookies.set(SIGNIN_COOKIE, "s" * 43, path="/console/sign-in")
    form = {**body, "signin_token": "s" * 43, "next": "/console"}
    with kdf.admit("203.0.113.7"):  # this address already has a login in progress
        api = await client.post("/api/v1/auth/login", json=body)
        console = await client.post("/console/sign-in", data=form)
    assert api.status_code == 429 and api.json()["error"]["code"] == "rate_limited"
    assert console.status_code == 429 and "in progress" in console.text
    for response in (api, console):
        assert response.headers["retry-after"] == "1"

    held = [kdf.admit(f"192.0.2.{n}") for n in range(kdf.capacity)]  # every place taken
    try:
        busy = await client.post("/api/v1/auth/login", json=body)
    finally:
        for place in held:
            with place:
                pass
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "busy"
    assert busy.headers["retry-after"] == "1"
    assert await clean_db.fetchval("SELECT count(*) FROM login_attempts") == 0  # refused before any work
    ok = await client.post("/api/v1/auth/login", json=body)  # places given back: the login goes through
    assert ok.status_code == 200, ok.text

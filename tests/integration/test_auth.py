"""Login, logout, lockout, rate limit, TOTP replay, the admin guard and its matrix, audit, logs.

The app runs in-process on its own pool and commits, so every test uses ``clean_db``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet
from starlette.applications import Starlette
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.routing import BaseRoute, Mount, Route

from shared.auth.sessions import new_token
from shared.auth.totp import code_at, current_step
from shared.auth.users import claim_totp_step
from shared.infra.config import Settings
from shared.infra.logs import configure_logging
from tests.factories import AdminAccount, create_admin, create_admin_session
from tests.helpers import running_app

LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
WHOAMI = "/api/v1/admin/whoami"
CLIENT_IP = "203.0.113.7"  # what tests.helpers.running_app's transport reports


@pytest.fixture
def settings_with_key(settings: Settings) -> Settings:
    return dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())


@pytest.fixture
async def app_client(
    settings_with_key: Settings, clean_db: Any
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with running_app(settings_with_key) as (app, client):
        yield app, client


async def _admin(pool: Any, settings: Settings, **kwargs: Any) -> AdminAccount:
    assert settings.mfa_encryption_key
    return await create_admin(pool, mfa_encryption_key=settings.mfa_encryption_key, **kwargs)


async def _away_from_step_boundary(margin: float = 2.0) -> None:
    """Codes are computed here and checked in the app a moment later: don't straddle a step."""
    remaining = 30 - time.time() % 30
    if remaining < margin:
        await asyncio.sleep(remaining + 0.05)


def _credentials(account: AdminAccount, **overrides: str) -> dict[str, str]:
    return {"email": account.email, "password": account.password, "totp_code": account.code_now()} | overrides


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def _login(client: httpx.AsyncClient, account: AdminAccount, **headers: str) -> str:
    await _away_from_step_boundary()
    response = await client.post(LOGIN, json=_credentials(account), headers=headers)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


# --- login ------------------------------------------------------------------------------------


async def test_login_issues_an_opaque_token_stored_only_as_its_hash(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    account = await _admin(clean_db, settings_with_key)
    await _away_from_step_boundary()
    response = await client.post(LOGIN, json=_credentials(account))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"token", "expires_at"}
    token = body["token"]
    assert len(token) >= 43  # 32 random bytes, url-safe base64
    expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    expected = datetime.now(UTC) + timedelta(seconds=settings_with_key.session_ttl_seconds)
    assert abs((expires_at - expected).total_seconds()) < 10

    row = await clean_db.fetchrow("SELECT * FROM admin_sessions")
    assert bytes(row["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert row["mfa_passed"] is True and row["revoked_at"] is None and row["ip"] == CLIENT_IP
    dump = orjson.dumps([dict(r) for r in await clean_db.fetch("SELECT * FROM admin_sessions")], default=str)
    assert token.encode() not in dump

    whoami = await client.get(WHOAMI, headers=_bearer(token))
    assert whoami.status_code == 200
    assert whoami.json() == {"email": account.email, "role": "admin"}


async def test_wrong_email_password_or_code_get_one_generic_401(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    account = await _admin(clean_db, settings_with_key)
    wrong_code = code_at(account.totp_secret, current_step() + 5)
    attempts = [
        _credentials(account, email="nobody@example.test"),
        _credentials(account, password=account.password + "x"),
        _credentials(account, totp_code=wrong_code),
        _credentials(account, totp_code="abcdef"),
    ]
    bodies = []
    for attempt in attempts:
        response = await client.post(LOGIN, json=attempt)
        _assert_error(response, 401, "invalid_credentials")
        bodies.append(response.json())
    assert all(body == bodies[0] for body in bodies)
    reasons = await clean_db.fetch(
        "SELECT metadata->>'reason' AS reason FROM audit_log WHERE action = 'auth.login_failed' ORDER BY id"
    )
    assert [r["reason"] for r in reasons] == ["unknown_email", "bad_password", "bad_code", "bad_code"]


async def test_email_is_case_insensitive(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    account = await _admin(clean_db, settings_with_key)
    await _away_from_step_boundary()
    response = await client.post(LOGIN, json=_credentials(account, email=f"  {account.email.upper()} "))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"a string"',
        b"{}",
        b'{"email": "a@b.c", "password": "pw-123456789"}',
        b'{"email": "a@b.c", "password": "pw-123456789", "totp_code": 123456}',
        b'{"email": null, "password": "pw-123456789", "totp_code": "123456"}',
        b'{"email": "a@b.c", "password": ["x"], "totp_code": "123456"}',
        b'{"email": "", "password": "pw-123456789", "totp_code": "123456"}',
        b'{"email": "a@b.c", "password": "' + b"x" * 1025 + b'", "totp_code": "123456"}',
        b'{"email": "' + b"x" * 400 + b'@b.c", "password": "p", "totp_code": "123456"}',
    ],
)
async def test_malformed_login_bodies_are_400_never_500(
    app_client: tuple[Starlette, httpx.AsyncClient], body: bytes
) -> None:
    _, client = app_client
    response = await client.post(LOGIN, content=body, headers={"Content-Type": "application/json"})
    _assert_error(response, 400, "invalid_request")


async def test_login_without_mfa_key_is_503_and_names_the_variable_in_the_log(
    settings: Settings, clean_db: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG", "json")
    async with running_app(settings) as (_, client):
        capfd.readouterr()
        response = await client.post(
            LOGIN, json={"email": "a@example.test", "password": "pw-123456789", "totp_code": "123456"}
        )
        out = capfd.readouterr().out
    _assert_error(response, 503, "unavailable")
    assert "MFA_ENCRYPTION_KEY" not in response.text
    assert any(
        line.get("event") == "login_unconfigured" and "MFA_ENCRYPTION_KEY" in line.get("error_message", "")
        for line in map(orjson.loads, filter(str.strip, out.splitlines()))
    )
    assert await clean_db.fetchval("SELECT count(*) FROM login_attempts") == 0


# --- TOTP: drift, replay, concurrency ---------------------------------------------------------


async def test_one_step_of_drift_is_accepted_and_the_matched_step_recorded(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    early, late, far = [await _admin(clean_db, settings_with_key) for _ in range(3)]
    await _away_from_step_boundary()
    step = current_step()
    assert (
        await client.post(LOGIN, json=_credentials(early, totp_code=early.code_now(-1)))
    ).status_code == 200
    assert (await client.post(LOGIN, json=_credentials(late, totp_code=late.code_now(1)))).status_code == 200
    response = await client.post(LOGIN, json=_credentials(far, totp_code=far.code_now(-2)))
    _assert_error(response, 401, "invalid_credentials")
    recorded = {
        r["id"]: r["totp_last_used_step"]
        for r in await clean_db.fetch("SELECT id, totp_last_used_step FROM users")
    }
    assert recorded == {early.user_id: step - 1, late.user_id: step + 1, far.user_id: None}


async def test_a_code_is_accepted_once_and_earlier_steps_are_refused_after_it(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    account = await _admin(clean_db, settings_with_key)
    await _away_from_step_boundary()
    code = account.code_now()
    first = await client.post(LOGIN, json=_credentials(account, totp_code=code))
    assert first.status_code == 200
    replay = await client.post(LOGIN, json=_credentials(account, totp_code=code))
    _assert_error(replay, 401, "invalid_credentials")
    older = await client.post(LOGIN, json=_credentials(account, totp_code=account.code_now(-1)))
    _assert_error(older, 401, "invalid_credentials")
    reasons = await clean_db.fetch(
        "SELECT metadata->>'reason' AS reason FROM audit_log WHERE action = 'auth.login_failed' ORDER BY id"
    )
    assert [r["reason"] for r in reasons] == ["replayed_code", "replayed_code"]


async def test_concurrent_logins_with_the_same_code_give_exactly_one_session(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    app, _ = app_client
    account = await _admin(clean_db, settings_with_key)
    await _away_from_step_boundary(margin=5)
    credentials = _credentials(account)
    # six addresses: one address gets one login in progress at a time (shared/auth/kdf_queue.py)
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(f"198.51.100.{n}", 40000)), base_url="http://t"
        )
        for n in range(1, 7)
    ]
    try:
        responses = await asyncio.gather(*(c.post(LOGIN, json=credentials) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 401, 401, 401, 401, 401], [r.text for r in responses]
    assert await clean_db.fetchval("SELECT count(*) FROM admin_sessions") == 1


async def test_the_conditional_update_alone_lets_one_of_two_concurrent_claims_win(
    clean_db: Any, settings_with_key: Settings
) -> None:
    """Without the login path's advisory lock: two transactions claim the same step."""
    account = await _admin(clean_db, settings_with_key)
    step = current_step()
    async with clean_db.acquire() as first, clean_db.acquire() as second:
        tx_first, tx_second = first.transaction(), second.transaction()
        await tx_first.start()
        await tx_second.start()
        committed = False
        racing: asyncio.Future[bool] | None = None
        try:
            assert await claim_totp_step(first, account.user_id, step) is True
            racing = asyncio.ensure_future(claim_totp_step(second, account.user_id, step))
            await asyncio.sleep(0.2)
            assert not racing.done(), "the second claim must wait for the first transaction"
            await tx_first.commit()
            committed = True
            assert await asyncio.wait_for(racing, timeout=5) is False
        finally:
            if not committed:
                await tx_first.rollback()
            if racing is not None:
                await asyncio.wait([racing], timeout=5)
            await tx_second.rollback()
    assert await clean_db.fetchval("SELECT totp_last_used_step FROM users") == step


# --- lockout and rate limit -------------------------------------------------------------------


async def test_five_failures_lock_the_account_until_the_window_passes(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    account = await _admin(clean_db, settings_with_key)
    wrong = _credentials(account, password="wrong-password-1")
    for _ in range(5):
        _assert_error(await client.post(LOGIN, json=wrong), 401, "invalid_credentials")
    sixth = await client.post(LOGIN, json=wrong)
    _assert_error(sixth, 429, "locked")
    assert 800 < int(sixth.headers["retry-after"]) <= 900
    await _away_from_step_boundary()
    correct_while_locked = await client.post(LOGIN, json=_credentials(account))
    _assert_error(correct_while_locked, 429, "locked")
    locked_until = await clean_db.fetchval("SELECT locked_until FROM users WHERE id = $1", account.user_id)
    assert timedelta(minutes=14) < locked_until - datetime.now(UTC) <= timedelta(minutes=15)
    # Attempts while locked are not recorded: 5 failures, not 7.
    assert await clean_db.fetchval("SELECT count(*) FROM login_attempts WHERE NOT succeeded") == 5

    await clean_db.execute("UPDATE users SET locked_until = now() - interval '1 second'")
    await clean_db.execute("UPDATE login_attempts SET attempted_at = attempted_at - interval '16 minutes'")
    await _login(client, account)


async def test_an_unknown_email_locks_exactly_like_a_known_one(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    """Otherwise "429 after five tries" would tell an attacker which emails have accounts."""
    _, client = app_client
    attempt = {"email": "ghost@example.test", "password": "wrong-password-1", "totp_code": "123456"}
    for _ in range(5):
        _assert_error(await client.post(LOGIN, json=attempt), 401, "invalid_credentials")
    sixth = await client.post(LOGIN, json=attempt)
    _assert_error(sixth, 429, "locked")
    assert 800 < int(sixth.headers["retry-after"]) <= 900
    await clean_db.execute("UPDATE login_attempts SET attempted_at = attempted_at - interval '16 minutes'")
    _assert_error(await client.post(LOGIN, json=attempt), 401, "invalid_credentials")


async def test_twenty_failures_from_one_ip_rate_limit_that_ip_only(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    app, client = app_client
    account = await _admin(clean_db, settings_with_key)
    for n in range(20):  # four per email, so no account lock gets involved
        attempt = {
            "email": f"spray-{n // 4}@example.test",
            "password": "wrong-password-1",
            "totp_code": "123456",
        }
        _assert_error(await client.post(LOGIN, json=attempt), 401, "invalid_credentials")
    await _away_from_step_boundary()
    limited = await client.post(LOGIN, json=_credentials(account))
    _assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) > 0
    other_ip = httpx.ASGITransport(app=app, client=("198.51.100.9", 40000))
    async with httpx.AsyncClient(transport=other_ip, base_url="http://fmhl.test") as elsewhere:
        assert (await elsewhere.post(LOGIN, json=_credentials(account))).status_code == 200


# --- sessions: logout, disable, expiry --------------------------------------------------------


async def test_logout_revokes_the_token(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    token = await _login(client, await _admin(clean_db, settings_with_key))
    response = await client.post(LOGOUT, headers=_bearer(token))
    assert response.status_code == 204 and response.content == b""
    assert await clean_db.fetchval("SELECT revoked_at IS NOT NULL FROM admin_sessions") is True
    _assert_error(await client.get(WHOAMI, headers=_bearer(token)), 401, "unauthenticated")
    _assert_error(await client.post(LOGOUT, headers=_bearer(token)), 401, "unauthenticated")
    _assert_error(await client.post(LOGOUT), 401, "unauthenticated")


async def test_a_disabled_users_sessions_stop_at_once_and_login_is_refused(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    account = await _admin(clean_db, settings_with_key)
    token = await _login(client, account)
    assert (await client.get(WHOAMI, headers=_bearer(token))).status_code == 200
    # Only disabled_at changes (sessions not revoked): the guard itself must refuse.
    await clean_db.execute("UPDATE users SET disabled_at = now() WHERE id = $1", account.user_id)
    _assert_error(await client.get(WHOAMI, headers=_bearer(token)), 401, "unauthenticated")
    await _away_from_step_boundary()
    _assert_error(await client.post(LOGIN, json=_credentials(account)), 401, "invalid_credentials")
    reason = await clean_db.fetchval(
        "SELECT metadata->>'reason' FROM audit_log WHERE action = 'auth.login_failed'"
        " ORDER BY id DESC LIMIT 1"
    )
    assert reason == "disabled"


async def test_a_session_expires(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    token = await _login(client, await _admin(clean_db, settings_with_key))
    await clean_db.execute(
        "UPDATE admin_sessions"
        " SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 second'"
    )
    _assert_error(await client.get(WHOAMI, headers=_bearer(token)), 401, "unauthenticated")


# --- the guard over every admin route ---------------------------------------------------------


def _placeholder(convertor: Any) -> str:
    if isinstance(convertor, IntegerConvertor):
        return "1"
    if isinstance(convertor, FloatConvertor):
        return "1.0"
    return str(uuid.uuid4())


def _admin_operations(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(method, concrete path, template) for every route under /api/v1/admin, mounts included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from _admin_operations(list(route.routes), prefix + route.path)
        elif isinstance(route, Route) and (prefix + route.path).startswith("/api/v1/admin"):
            values = {name: _placeholder(conv) for name, conv in route.param_convertors.items()}
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                yield method, prefix + route.path_format.format(**values), prefix + route.path


async def test_every_admin_route_refuses_everyone_but_a_live_admin(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    app, client = app_client
    admin = await _admin(clean_db, settings_with_key)
    support = await _admin(clean_db, settings_with_key, role="support")
    disabled = await _admin(clean_db, settings_with_key, disabled=True)
    cases: dict[str, tuple[dict[str, str], int, str]] = {
        "no token": ({}, 401, "unauthenticated"),
        "malformed: wrong scheme": ({"Authorization": f"Token {new_token()}"}, 401, "unauthenticated"),
        "malformed: bearer only": ({"Authorization": "Bearer"}, 401, "unauthenticated"),
        "malformed: bad characters": ({"Authorization": "Bearer not/a/token!" * 4}, 401, "unauthenticated"),
        "unknown token": (_bearer(new_token()), 401, "unauthenticated"),
        "expired": (
            _bearer(await create_admin_session(clean_db, admin.user_id, expired=True)),
            401,
            "unauthenticated",
        ),
        "revoked": (
            _bearer(await create_admin_session(clean_db, admin.user_id, revoked=True)),
            401,
            "unauthenticated",
        ),
        "disabled admin": (
            _bearer(await create_admin_session(clean_db, disabled.user_id)),
            401,
            "unauthenticated",
        ),
        "support user": (_bearer(await create_admin_session(clean_db, support.user_id)), 403, "forbidden"),
    }
    operations = list(_admin_operations(list(app.routes)))
    assert ("GET", WHOAMI, WHOAMI) in operations
    for method, path, template in operations:
        for case, (headers, status, code) in cases.items():
            response = await client.request(
                method, path, headers=headers, json={} if method != "GET" else None
            )
            assert response.status_code == status, f"{method} {template} [{case}]: {response.text}"
            body = response.json()
            assert body == {"error": {"code": code, "message": body["error"]["message"]}}, (
                method,
                template,
                case,
            )
    live = await client.get(WHOAMI, headers=_bearer(await create_admin_session(clean_db, admin.user_id)))
    assert live.status_code == 200  # the control: the same route does answer a live admin


async def test_openapi_documents_auth_and_bearer_security_on_admin_routes(
    app_client: tuple[Starlette, httpx.AsyncClient],
) -> None:
    _, client = app_client
    spec = (await client.get("/openapi.json")).json()
    login = spec["paths"][LOGIN]["post"]
    body_ref = login["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert spec["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]["required"] == [
        "email",
        "password",
        "totp_code",
    ]
    for status in ("400", "401", "429"):
        assert login["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    assert spec["paths"][LOGOUT]["post"]["security"] == [{"bearer": []}]
    admin_ops = [
        (path, op)
        for path, ops in spec["paths"].items()
        if path.startswith("/api/v1/admin")
        for op in ops.values()
    ]
    assert admin_ops
    for path, op in admin_ops:
        assert op.get("security") == [{"bearer": []}], path
        assert {"401", "403"} <= set(op["responses"]), path


# --- audit and logs ---------------------------------------------------------------------------


async def test_every_state_change_leaves_one_audit_row_with_actor_ip_and_request_id(
    app_client: tuple[Starlette, httpx.AsyncClient], clean_db: Any, settings_with_key: Settings
) -> None:
    _, client = app_client
    account = await _admin(clean_db, settings_with_key)
    await _away_from_step_boundary()
    wrong_code = account.code_now(3)
    failed = await client.post(
        LOGIN, json=_credentials(account, totp_code=wrong_code), headers={"X-Request-ID": "req-login-failed"}
    )
    assert failed.status_code == 401
    token = await _login(client, account, **{"X-Request-ID": "req-login-ok"})
    assert (
        await client.post(LOGOUT, headers=_bearer(token) | {"X-Request-ID": "req-logout"})
    ).status_code == 204

    rows = [dict(r) for r in await clean_db.fetch("SELECT * FROM audit_log ORDER BY id")]
    assert [(r["action"], r["actor"], r["request_id"]) for r in rows] == [
        ("auth.login_failed", "anonymous", "req-login-failed"),
        ("auth.login", account.email, "req-login-ok"),
        ("auth.logout", account.email, "req-logout"),
    ]
    assert all(r["ip"] == CLIENT_IP for r in rows)
    assert rows[0]["target_id"] == str(account.user_id)
    assert rows[0]["metadata"]["reason"] == "bad_code"
    session_id = await clean_db.fetchval("SELECT id FROM admin_sessions")
    assert rows[1]["actor_user_id"] == account.user_id and rows[1]["target_id"] == str(session_id)
    assert rows[2]["target_id"] == str(session_id)
    dump = orjson.dumps(rows, default=str).decode()
    for secret in (account.password, wrong_code, token, account.totp_secret):
        assert secret not in dump


async def test_nothing_logged_contains_a_password_token_code_or_secret(
    settings_with_key: Settings, clean_db: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG", "json")
    account = await _admin(clean_db, settings_with_key)
    async with running_app(settings_with_key) as (_, client):
        capfd.readouterr()
        await _away_from_step_boundary()
        good_code, bad_code = account.code_now(), account.code_now(-3)
        await client.post(LOGIN, json=_credentials(account, totp_code=bad_code))
        await client.post(LOGIN, json=_credentials(account, password="Wrong-Password-Zq9"))
        response = await client.post(LOGIN, json=_credentials(account, totp_code=good_code))
        token = response.json()["token"]
        await client.post(LOGIN, json=_credentials(account, totp_code=good_code))  # replay
        await client.get(WHOAMI, headers=_bearer(token))
        await client.post(LOGOUT, headers=_bearer(token))
        await client.get(WHOAMI, headers=_bearer(token))
        await client.post(LOGIN, content=b'{"email": 1, "password": "Wrong-Password-Zq9"}')
        out = capfd.readouterr()
    text = out.out + out.err
    events = [orjson.loads(line).get("event") for line in out.out.splitlines() if line.strip()]
    assert {"login_failed", "login_succeeded", "logout"} <= set(events), events
    for secret in (account.password, "Wrong-Password-Zq9", token, account.totp_secret):
        assert secret not in text
    assert hashlib.sha256(token.encode()).hexdigest() not in text
    for code in (good_code, bad_code):  # digits bounded by non-digits: not inside a timestamp
        assert not re.search(rf"(?<!\d){code}(?!\d)", text), code

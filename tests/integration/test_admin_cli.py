"""``fmhl-ops admin create|reset-mfa|disable`` as real processes, the account use cases in-process,
and ``ensure_demo_admin``. The CLI commits from another process, so these tests use ``clean_db``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import pyotp
import pytest
from cryptography.fernet import Fernet

from shared.auth.passwords import verify_password
from shared.auth.users import DEMO_ADMIN_EMAIL, create_user, disable_user, ensure_demo_admin, reset_mfa
from shared.infra.config import Settings
from shared.infra.correlation import bind_correlation_id, reset_correlation_id
from shared.infra.errors import Conflict, Invalid, NotFound
from tests.helpers import running_app
from tests.procs import FMHL_OPS, base_env

LOGIN = "/api/v1/auth/login"
WHOAMI = "/api/v1/admin/whoami"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def settings_with_key(settings: Settings) -> Settings:
    return dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())


async def _fmhl_ops(
    args: Sequence[str], *, database_url: str, key: str | None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = base_env(DATABASE_URL=database_url)
    env.pop("MFA_ENCRYPTION_KEY", None)
    if key is not None:
        env["MFA_ENCRYPTION_KEY"] = key
    return await asyncio.to_thread(
        subprocess.run, [FMHL_OPS, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )


def _uri(result: subprocess.CompletedProcess[str]) -> str:
    uris = [line for line in result.stdout.splitlines() if line.startswith("otpauth://")]
    assert len(uris) == 1, result.stdout
    return uris[0]


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


async def _wait_for_fresh_step() -> None:
    remaining = 30 - time.time() % 30
    if remaining < 2:
        await asyncio.sleep(remaining + 0.05)


async def test_create_prints_the_uri_once_and_the_account_can_log_in(
    settings_with_key: Settings, clean_db: Any, database_url: str
) -> None:
    key = settings_with_key.mfa_encryption_key
    result = await _fmhl_ops(
        ["admin", "create", "--email", "Ops@Example.test", "--role", "admin"],
        database_url=database_url,
        key=key,
        stdin=PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    uri = _uri(result)
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    assert (result.stdout + result.stderr).count(totp.secret) == 1  # shown once, never logged
    assert PASSWORD not in result.stdout + result.stderr

    user = await clean_db.fetchrow("SELECT * FROM users")
    assert user["email"] == "ops@example.test" and user["role"] == "admin"
    assert user["password_hash"].startswith("scrypt$131072$8$1$")
    assert verify_password(PASSWORD, user["password_hash"])
    assert totp.secret not in user["totp_secret_encrypted"]
    assert Fernet(key.encode()).decrypt(user["totp_secret_encrypted"].encode()).decode() == totp.secret
    audit = await clean_db.fetchrow("SELECT * FROM audit_log")
    assert (audit["action"], audit["actor"], audit["target_id"]) == ("user.created", "cli", str(user["id"]))
    assert audit["request_id"].startswith("cli-")

    await _wait_for_fresh_step()
    async with running_app(settings_with_key) as (_, client):
        login = {"email": "ops@example.test", "password": PASSWORD, "totp_code": totp.now()}
        response = await client.post(LOGIN, json=login)
        assert response.status_code == 200, response.text
        whoami = await client.get(WHOAMI, headers={"Authorization": f"Bearer {response.json()['token']}"})
        assert whoami.json() == {"email": "ops@example.test", "role": "admin"}


async def test_duplicate_email_is_refused_with_one_line(
    settings_with_key: Settings, clean_db: Any, database_url: str
) -> None:
    args = ["admin", "create", "--email", "dup@example.test", "--role", "support"]
    key = settings_with_key.mfa_encryption_key
    first = await _fmhl_ops(args, database_url=database_url, key=key, stdin=PASSWORD + "\n")
    assert first.returncode == 0, first.stderr
    again = await _fmhl_ops(
        ["admin", "create", "--email", "DUP@example.test", "--role", "admin"],
        database_url=database_url,
        key=key,
        stdin=PASSWORD + "\n",
    )
    assert again.returncode == 1
    assert "already exists" in _one_line_error(again)
    assert "otpauth://" not in again.stdout
    assert await clean_db.fetchval("SELECT count(*) FROM users") == 1
    assert await clean_db.fetchval("SELECT count(*) FROM audit_log") == 1


@pytest.mark.parametrize(
    ("key", "stdin", "exit_code", "expect"),
    [
        (None, PASSWORD + "\n", 2, "MFA_ENCRYPTION_KEY"),
        ("bm90LWEta2V5", PASSWORD + "\n", 2, "MFA_ENCRYPTION_KEY"),
        ("valid", "short\n", 1, "at least 12 characters"),
        ("valid", "", 1, "no password"),
    ],
)
async def test_create_fails_with_one_line_before_writing_anything(
    clean_db: Any, database_url: str, key: str | None, stdin: str, exit_code: int, expect: str
) -> None:
    key = Fernet.generate_key().decode() if key == "valid" else key
    result = await _fmhl_ops(
        ["admin", "create", "--email", "x@example.test", "--role", "admin"],
        database_url=database_url,
        key=key,
        stdin=stdin,
    )
    assert result.returncode == exit_code
    line = _one_line_error(result)
    assert expect in line
    if key:
        assert key not in line
    assert await clean_db.fetchval("SELECT count(*) FROM users") == 0


async def test_reset_mfa_and_disable_revoke_sessions(
    settings_with_key: Settings, clean_db: Any, database_url: str
) -> None:
    key = settings_with_key.mfa_encryption_key
    created = await _fmhl_ops(
        ["admin", "create", "--email", "ops@example.test", "--role", "admin"],
        database_url=database_url,
        key=key,
        stdin=PASSWORD + "\n",
    )
    old = pyotp.parse_uri(_uri(created))
    async with running_app(settings_with_key) as (_, client):

        async def login(totp: Any) -> Any:
            await _wait_for_fresh_step()
            body = {"email": "ops@example.test", "password": PASSWORD, "totp_code": totp.now()}
            return await client.post(LOGIN, json=body)

        first = await login(old)
        assert first.status_code == 200
        bearer = {"Authorization": f"Bearer {first.json()['token']}"}

        reset = await _fmhl_ops(
            ["admin", "reset-mfa", "--email", "ops@example.test"], database_url=database_url, key=key
        )
        assert reset.returncode == 0, reset.stderr
        new = pyotp.parse_uri(_uri(reset))
        assert new.secret != old.secret
        assert "revoked 1 session" in reset.stderr
        assert (await client.get(WHOAMI, headers=bearer)).status_code == 401
        assert (await login(old)).status_code == 401
        second = await login(new)
        assert second.status_code == 200
        bearer = {"Authorization": f"Bearer {second.json()['token']}"}

        disabled = await _fmhl_ops(
            ["admin", "disable", "--email", "ops@example.test"], database_url=database_url, key=None
        )
        assert disabled.returncode == 0, disabled.stderr
        assert "revoked 1 session" in disabled.stdout
        assert (await client.get(WHOAMI, headers=bearer)).status_code == 401
        assert await clean_db.fetchval("SELECT count(*) FROM admin_sessions WHERE revoked_at IS NULL") == 0

        again = await _fmhl_ops(
            ["admin", "disable", "--email", "ops@example.test"], database_url=database_url, key=None
        )
        assert again.returncode == 0 and "already disabled" in again.stdout

    actions = [r["action"] for r in await clean_db.fetch("SELECT action FROM audit_log WHERE actor = 'cli'")]
    assert sorted(actions) == ["user.created", "user.disabled", "user.mfa_reset"]


@pytest.mark.parametrize("command", ["reset-mfa", "disable"])
async def test_unknown_email_is_one_line_and_non_zero(
    settings_with_key: Settings, clean_db: Any, database_url: str, command: str
) -> None:
    result = await _fmhl_ops(
        ["admin", command, "--email", "nobody@example.test"],
        database_url=database_url,
        key=settings_with_key.mfa_encryption_key,
    )
    assert result.returncode == 1
    assert "no user with email nobody@example.test" in _one_line_error(result)


async def test_account_use_cases_audit_each_change_once(conn: Any, settings_with_key: Settings) -> None:
    token = bind_correlation_id("req-accounts-1")
    try:
        enrolment = await create_user(
            conn, settings_with_key, email="a@example.test", role="support", password=PASSWORD
        )
        with pytest.raises(Conflict):
            await create_user(
                conn, settings_with_key, email="A@example.test", role="admin", password=PASSWORD
            )
        with pytest.raises(Invalid):
            await create_user(conn, settings_with_key, email="b@example.test", role="root", password=PASSWORD)
        await reset_mfa(conn, settings_with_key, email="a@example.test")
        first = await disable_user(conn, email="a@example.test")
        second = await disable_user(conn, email="a@example.test")
        with pytest.raises(NotFound):
            await disable_user(conn, email="nobody@example.test")
    finally:
        reset_correlation_id(token)
    assert enrolment.role == "support" and enrolment.otpauth_uri.startswith("otpauth://")
    assert not first.already_disabled and second.already_disabled
    assert second.disabled_at == first.disabled_at
    rows = await conn.fetch("SELECT action, actor, request_id, target_id FROM audit_log ORDER BY id")
    assert [(r["action"], r["actor"], r["request_id"]) for r in rows] == [
        ("user.created", "cli", "req-accounts-1"),
        ("user.mfa_reset", "cli", "req-accounts-1"),
        ("user.disabled", "cli", "req-accounts-1"),
    ]
    assert {r["target_id"] for r in rows} == {str(enrolment.user_id)}


async def test_ensure_demo_admin_creates_then_reenrols(
    settings_with_key: Settings, clean_db: Any, pool: Any
) -> None:
    email, password, uri = await ensure_demo_admin(pool, settings_with_key)
    assert email == DEMO_ADMIN_EMAIL == "admin@fmhl.local"
    # Locked and disabled meanwhile: re-enrolling must give a usable account again.
    await clean_db.execute("UPDATE users SET disabled_at = now(), locked_until = now() + interval '1 hour'")
    email_again, password_again, uri_again = await ensure_demo_admin(pool, settings_with_key)
    assert email_again == email and password_again != password and uri_again != uri
    assert await clean_db.fetchval("SELECT count(*) FROM users") == 1

    await _wait_for_fresh_step()
    async with running_app(settings_with_key) as (_, client):
        stale = {"email": email, "password": password, "totp_code": pyotp.parse_uri(uri).now()}
        assert (await client.post(LOGIN, json=stale)).status_code == 401
        fresh = {"email": email, "password": password_again, "totp_code": pyotp.parse_uri(uri_again).now()}
        response = await client.post(LOGIN, json=fresh)
        assert response.status_code == 200, response.text
    actions = [r["action"] for r in await clean_db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions[:2] == ["user.created", "user.reenrolled"]

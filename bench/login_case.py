"""Login burst (issue 16): another address's login latency while one address fires 100 wrong logins.

Through a real ``fmhl-ops serve`` (uvicorn), as the security review measured it: ``BURST``
concurrent wrong logins (unknown emails: each would cost one scrypt derivation) from one address,
and, 0.3 s into the burst, correct logins from other addresses one after another. Addresses travel
in ``X-Forwarded-For`` from 127.0.0.1 (``FORWARDED_ALLOW_IPS``), as behind an ingress. Each
correct login is a different admin (a TOTP code is accepted once per user and step). The baseline
is the same logins with no burst, measured in the same run; the target is the issue's: < 2 s.

What to expect: the burst gets one derivation through (one place per address); the first login
from elsewhere runs its derivation alongside it, the next ones as if there were no burst. On an idle
2-core machine both derivations have a core each. On a shared, loaded one, two concurrent 128 MiB
derivations slow each other down (measured here: 0.8 s alone, 2.6 s each as a pair at load 6), so
the p95 can miss 2 s there while staying independent of the burst's size (before: 19-48 s).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import httpx
from cryptography.fernet import Fernet

from bench.common import Backends, Result, Scale, percentile, progress
from bench.http_cases import serve_args, server_process, service_env
from cli.embedded import free_port
from shared.auth.passwords import hash_password
from shared.auth.totp import code_at, current_step, encrypt_secret, new_secret

LOGIN = "/api/v1/auth/login"
BURST = 100
ATTACKER = "198.51.100.66"
TARGET_MS = 2000.0


@dataclass(frozen=True, slots=True)
class _Admin:
    email: str
    password: str = field(repr=False)
    secret: str = field(repr=False)


async def _create_admins(database_url: str, key: str, count: int) -> list[_Admin]:
    password = f"bench-{uuid.uuid4().hex}"
    stored = hash_password(password)  # one derivation shared by all (bench accounts only)
    cipher = Fernet(key.encode())
    admins = [
        _Admin(f"bench-login-{uuid.uuid4().hex[:10]}@example.test", password, new_secret())
        for _ in range(count)
    ]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.executemany(
            "INSERT INTO users (email, password_hash, role, totp_secret_encrypted)"
            " VALUES ($1, $2, 'admin', $3)",
            [(a.email, stored, encrypt_secret(cipher, a.secret)) for a in admins],
        )
    finally:
        await conn.close()
    return admins


async def _login(client: httpx.AsyncClient, admin: _Admin, address: str) -> float:
    body = {
        "email": admin.email,
        "password": admin.password,
        "totp_code": code_at(admin.secret, current_step()),
    }
    started = time.perf_counter()
    response = await client.post(LOGIN, json=body, headers={"X-Forwarded-For": address})
    elapsed = 1000 * (time.perf_counter() - started)
    if response.status_code != 200:
        raise RuntimeError(f"login from {address} -> {response.status_code}: {response.text[:200]}")
    return elapsed


async def _wrong(client: httpx.AsyncClient) -> int:
    body = {"email": f"nobody-{uuid.uuid4().hex}@example.test", "password": "wrong", "totp_code": "000000"}
    response = await client.post(LOGIN, json=body, headers={"X-Forwarded-For": ATTACKER})
    return response.status_code


async def login_burst_case(backends: Backends, scale: Scale) -> list[Result]:
    rounds = max(1, scale.rounds)
    per_round = 1 if scale.name == "toy" else 5  # toy: make test only checks the case runs
    progress(f"login burst: {rounds} x {BURST} wrong logins from one address, {per_round} logins from others")
    env = service_env(backends) | {"FORWARDED_ALLOW_IPS": "127.0.0.1", "LOG_LEVEL": "WARNING"}
    admins = await _create_admins(backends.database_url, env["MFA_ENCRYPTION_KEY"], 2 * rounds * per_round)
    port = free_port()
    load = os.getloadavg()  # the target is absolute: a busy machine shows here
    idle: list[float] = []
    during: list[float] = []
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=BURST + 10)
    with server_process(serve_args(port), env, port):
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits
        ) as client:
            accounts = iter(admins)
            for round_no in range(rounds):
                for n in range(per_round):
                    idle.append(await _login(client, next(accounts), f"203.0.113.{n + 1}"))
                burst = [asyncio.ensure_future(_wrong(client)) for _ in range(BURST)]
                await asyncio.sleep(0.3)  # the burst is in the server
                for n in range(per_round):
                    during.append(await _login(client, next(accounts), f"192.0.2.{10 * round_no + n + 1}"))
                statuses.update(await asyncio.gather(*burst))
    p95, idle_p95 = percentile(during, 95), percentile(idle, 95)
    return [
        Result(
            "login burst",
            f"another address's login during {BURST} wrong logins from one address (p95)",
            p95,
            "ms",
            baseline=idle_p95,
            target=f"< {TARGET_MS:g}",
            note=(
                f"max {max(during):.0f} ms, n={len(during)}; without a burst p95 {idle_p95:.0f} ms; "
                f"burst answers {dict(sorted(statuses.items()))}; load average {load[0]:.1f} at start, "
                f"{os.getloadavg()[0]:.1f} at end ({os.cpu_count()} CPUs)"
            ),
        )
    ]

"""Issue 16 §2 against a real ``fmhl-ops serve``: a login burst from one address does not hold up
another address's login, and connections dribbling a request head are closed at the deadline.

Client addresses: uvicorn believes ``X-Forwarded-For`` from a peer in ``FORWARDED_ALLOW_IPS``
(127.0.0.1 here, the ingress in k8s), so each request says which address it comes from.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from cli.embedded import free_port
from shared.infra.http_server import MAIN_HEAD_DEADLINE_SECONDS
from tests.factories import create_admin
from tests.procs import Proc, base_env, wait_http

LOGIN = "/api/v1/auth/login"
BURST = 100
# The target. The burst gets one derivation through (one place per address), which runs
# alongside the operator's: on an idle 2-core machine each has a core (~0.5 s); on this shared one
# a lone login already takes ~1 s and two derivations share what CPU there is. So the bound is the
# larger of the target and SLACK x a no-burst login measured in the same run: it does not grow with
# the burst. Before the fix the login queued behind the whole burst: 19-48 s, far beyond either.
TARGET_SECONDS = 2.0
SLACK = 4.0
ATTACKER = "198.51.100.66"
OPERATOR = "203.0.113.9"


@pytest.fixture
def mfa_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def served(database_url: str, redis_url: str, mfa_key: str, clean_db: Any) -> Iterator[str]:
    port = free_port()
    env = base_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MFA_ENCRYPTION_KEY=mfa_key,
        FORWARDED_ALLOW_IPS="127.0.0.1",
        LOG_LEVEL="WARNING",
    )
    proc = Proc(["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0"], env).start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health/ready", timeout=30, proc=proc)
        yield base
    finally:
        proc.stop()
    assert "Traceback" not in proc.output(), proc.output()[-3000:]


@pytest.mark.serial  # compares login latency during a burst with a baseline
async def test_a_login_burst_from_one_address_does_not_hold_up_another_address(
    served: str, clean_db: Any, mfa_key: str
) -> None:
    operator = await create_admin(clean_db, mfa_encryption_key=mfa_key)
    baseline_admin = await create_admin(clean_db, mfa_encryption_key=mfa_key)
    limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=BURST + 10)
    async with httpx.AsyncClient(base_url=served, timeout=120, limits=limits) as client:

        async def wrong() -> int:
            body = {
                "email": f"x-{uuid.uuid4().hex}@example.test",
                "password": "wrong-password",
                "totp_code": "1",
            }
            response = await client.post(LOGIN, json=body, headers={"X-Forwarded-For": ATTACKER})
            if response.status_code == 429:
                assert response.headers["retry-after"].isdigit()
                assert response.json()["error"]["code"] in {"rate_limited", "busy"}
            return response.status_code

        quiet = {
            "email": baseline_admin.email,
            "password": baseline_admin.password,
            "totp_code": baseline_admin.code_now(),
        }
        started = time.perf_counter()
        assert (
            await client.post(LOGIN, json=quiet, headers={"X-Forwarded-For": OPERATOR})
        ).status_code == 200
        baseline = time.perf_counter() - started

        burst = [asyncio.ensure_future(wrong()) for _ in range(BURST)]
        await asyncio.sleep(0.3)  # the burst is in the server
        latencies, answers = [], []
        for offset in (0, 1):  # two logins, each with its own code (a code is accepted once)
            body = {
                "email": operator.email,
                "password": operator.password,
                "totp_code": operator.code_now(offset),
            }
            started = time.perf_counter()
            response = await client.post(LOGIN, json=body, headers={"X-Forwarded-For": OPERATOR})
            latencies.append(time.perf_counter() - started)
            answers.append(response.status_code)
        statuses = Counter(await asyncio.gather(*burst))
    reserved = await clean_db.fetchval("SELECT count(*) FROM login_attempts WHERE ip = $1", ATTACKER)
    print(
        f"\nburst of {BURST} wrong logins from {ATTACKER}: {dict(statuses)}, {reserved} reached the DB; "
        f"logins from {OPERATOR} during it: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)} "
        f"-> {answers}; without a burst {baseline * 1000:.0f} ms"
    )
    assert max(latencies) < max(TARGET_SECONDS, SLACK * baseline), (latencies, baseline)
    assert answers == [200, 200]
    assert statuses[401] + statuses[429] == BURST and statuses[429] >= BURST - 20
    assert reserved <= 2  # one place per address: the rest refused before any work


async def _dribble(port: int, results: list[float], stop: asyncio.Event) -> None:
    """One slowloris connection: a request head that never ends, one header line every 0.5 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
    try:
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(1), 0.5)
            except TimeoutError:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                continue
            if data == b"":
                results.append(time.monotonic() - started)
                return
    except ConnectionError:
        results.append(time.monotonic() - started)
    finally:
        writer.close()


async def test_connections_dribbling_a_request_head_are_closed_at_the_deadline(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    closed_after: list[float] = []
    stop = asyncio.Event()
    slow = [asyncio.ensure_future(_dribble(port, closed_after, stop)) for _ in range(200)]
    await asyncio.sleep(1.0)
    during = []
    async with httpx.AsyncClient(base_url=served, timeout=5) as client:
        for _ in range(3):
            started = time.perf_counter()
            assert (await client.get("/health/live")).status_code == 200
            during.append(time.perf_counter() - started)
            await asyncio.sleep(1.0)
    slack = 3.0
    await asyncio.sleep(max(0.0, MAIN_HEAD_DEADLINE_SECONDS + slack - 4.0))
    stop.set()
    await asyncio.gather(*slow)
    print(
        f"\n200 slowloris connections: {len(closed_after)} closed by the server, median after "
        f"{statistics.median(closed_after) if closed_after else float('nan'):.1f} s (deadline "
        f"{MAIN_HEAD_DEADLINE_SECONDS:.0f} s); a normal request meanwhile took "
        f"{', '.join(f'{s * 1000:.0f} ms' for s in during)}"
    )
    assert len(closed_after) == 200
    assert max(closed_after) < MAIN_HEAD_DEADLINE_SECONDS + slack

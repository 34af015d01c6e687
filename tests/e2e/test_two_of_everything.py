"""Issue 21 §4, two of everything: two ``fmhl-ops serve`` processes, two ``fmhl-ops worker`` per
queue and two schedulers over one Postgres and one Redis, as the manifests run them (more than one
replica of every deployment). Every piece of state a request or a job relies on lives in Postgres
or Redis, never in a process, so:

* a session opened on one service answers on the other (API bearer token, console cookie, and the
  console's CSRF token, which is derived from the shared ``MFA_ENCRYPTION_KEY``, not per process);
* the login lockout counts failed attempts made on both (alternating): the 6th is 429 ``locked``
  on either;
* every cron tick runs once (both schedulers on a 1-second schedule);
* a DLQ entry (captured by one of the two email workers) retried on both services at once is
  retried once: one 202, one 409, and the one new job runs once (its own failure is one new DLQ
  row with ``retry_of`` the entry).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from cli.embedded import free_port
from service.console.security import SESSION_COOKIE
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import ALL_QUEUES
from tests.factories import create_admin
from tests.procs import Proc, base_env, wait_http
from worker.cron import CRON_NAMES

LOGIN = "/api/v1/auth/login"
DLQ = "/api/v1/admin/queues/dlq"
SIGNIN_TOKEN = re.compile(r'name="signin_token" value="([^"]+)"')
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Fleet:
    services: list[str]
    procs: list[Proc] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def outputs(self) -> str:
        return "\n".join(f"--- {p.args}\n{p.output()[-2000:]}" for p in self.procs)


@pytest.fixture
def mfa_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def fleet(database_url: str, redis_url: str, mfa_key: str, clean_db: Any) -> Iterator[Fleet]:
    schedules = orjson.dumps({name: {"second": "*"} for name in CRON_NAMES}).decode()
    env = base_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MFA_ENCRYPTION_KEY=mfa_key,
        CONSOLE_INSECURE_COOKIES="1",
        CRON_SCHEDULES=schedules,
        EMAIL_BACKEND="log",
        LOG_LEVEL="WARNING",
    )
    ports = [free_port(), free_port()]
    fleet = Fleet([f"http://127.0.0.1:{port}" for port in ports])
    try:
        for port in ports:
            args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0"]
            fleet.procs.append(Proc(args, env).start())
        for queue in ALL_QUEUES:
            fleet.procs.extend(Proc(["worker", queue], env).start() for _ in range(2))
        for base, proc in zip(fleet.services, fleet.procs, strict=False):
            wait_http(f"{base}/health/ready", timeout=60, proc=proc)
        yield fleet
    finally:
        codes = [proc.stop() for proc in fleet.procs]
    assert codes == [0] * len(codes), fleet.outputs()
    assert "Traceback" not in fleet.outputs(), fleet.outputs()


async def _wait_for(predicate: Any, timeout: float, what: str, fleet: Fleet) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{fleet.outputs()}")


async def _all_workers_up(redis: Any) -> bool:
    counts = Counter(beat.queue for beat in await read_heartbeats(redis))
    return all(counts[queue] >= 2 for queue in ALL_QUEUES)


async def _console_sign_in(client: httpx.AsyncClient, base: str, email: str, password: str, code: str) -> str:
    form = await client.get(f"{base}/console/sign-in")
    token = SIGNIN_TOKEN.search(form.text)
    assert token, form.text[:500]
    body = {"signin_token": token.group(1), "next": "/console/audit", "email": email}
    signed_in = await client.post(
        f"{base}/console/sign-in", data=body | {"password": password, "totp_code": code}
    )
    assert signed_in.status_code == 303, signed_in.text[:500]
    return client.cookies[SESSION_COOKIE]


async def test_two_of_everything_share_sessions_lockout_cron_ticks_and_dlq_retries(
    fleet: Fleet, mfa_key: str, clean_db: Any, redis: Any
) -> None:
    one, two = fleet.services
    await _wait_for(lambda: _all_workers_up(redis), 60, "two workers per queue", fleet)
    up = time.monotonic()
    print(f"2 services + {2 * len(ALL_QUEUES)} workers up in {up - fleet.started:.1f}s")
    admin = await create_admin(clean_db, mfa_encryption_key=mfa_key)
    console_admin = await create_admin(clean_db, mfa_encryption_key=mfa_key)
    victim = await create_admin(clean_db, mfa_encryption_key=mfa_key)

    async with httpx.AsyncClient(timeout=30) as api:
        # A session opened on one service answers on the other; logged out there, gone on both.
        body = {"email": admin.email, "password": admin.password, "totp_code": admin.code_now()}
        opened = await api.post(f"{one}{LOGIN}", json=body)
        assert opened.status_code == 200, opened.text
        bearer = {"Authorization": f"Bearer {opened.json()['token']}"}
        for base in (one, two):
            whoami = await api.get(f"{base}/api/v1/admin/whoami", headers=bearer)
            assert whoami.status_code == 200 and whoami.json()["email"] == admin.email, whoami.text

        # The lockout counts failures made on both services.
        wrong = {"email": victim.email, "password": "wrong-password", "totp_code": "000000"}
        for attempt in range(5):
            refused = await api.post(f"{(one, two)[attempt % 2]}{LOGIN}", json=wrong)
            assert refused.status_code == 401, (attempt, refused.text)
        right = {"email": victim.email, "password": victim.password, "totp_code": victim.code_now()}
        for base in (one, two):
            locked = await api.post(f"{base}{LOGIN}", json=right)
            assert locked.status_code == 429 and locked.json()["error"]["code"] == "locked", locked.text

        # A DLQ entry captured by one of two email workers, retried on both services at once.
        await enqueue(
            redis,
            "send_email",
            to="p@example.test",
            template="no_such_template",
            context={},
            idempotency_key=f"two-{uuid.uuid4().hex}",
        )
        entry_id = await _wait_for(
            lambda: clean_db.fetchval(
                "SELECT id FROM dead_letter_queue WHERE error_type = 'UnknownTemplate' AND retry_of IS NULL"
            ),
            60,
            "the failure's DLQ row",
            fleet,
        )
        retries = await asyncio.gather(
            *(api.post(f"{base}{DLQ}/{entry_id}/retry", headers=bearer) for base in (one, two))
        )
        assert sorted(r.status_code for r in retries) == [202, 409], [r.text for r in retries]
        accepted = next(r for r in retries if r.status_code == 202).json()
        refused = next(r for r in retries if r.status_code == 409).json()
        assert refused["error"]["code"] == "already_resolved", refused
        await _wait_for(
            lambda: clean_db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE retry_of = $1", entry_id),
            60,
            "the retried job's own capture",
            fleet,
        )
        await asyncio.sleep(2.0)  # time for a second run, were there one
        again = await clean_db.fetch("SELECT job_id FROM dead_letter_queue WHERE retry_of = $1", entry_id)
        assert [r["job_id"] for r in again] == [accepted["job_id"]], again
        entry = await clean_db.fetchrow(
            "SELECT resolution, retry_job_id FROM dead_letter_queue WHERE id = $1", entry_id
        )
        assert entry["resolution"] == "retried" and entry["retry_job_id"] == accepted["job_id"]
        captured = await clean_db.fetch("SELECT * FROM dead_letter_queue")
        assert [(r["function"], r["error_type"]) for r in captured] == [
            ("send_email", "UnknownTemplate")
        ] * 2, [dict(r) for r in captured]

    async with httpx.AsyncClient(timeout=30) as browser:
        # The console cookie from one service is a session on the other, CSRF token included.
        token = await _console_sign_in(
            browser, one, console_admin.email, console_admin.password, console_admin.code_now()
        )
        page_one = await browser.get(f"{one}/console/audit")
        assert page_one.status_code == 200 and "auth.login" in page_one.text
        page_two = await browser.get(f"{two}/console/audit")
        assert page_two.status_code == 200 and "auth.login" in page_two.text
        csrf = CSRF.search(page_one.text)
        assert csrf
        out = await browser.post(f"{two}/console/sign-out", data={"csrf_token": csrf.group(1)})
        assert out.status_code == 303 and out.headers["location"] == "/console/sign-in", out.text[:500]
        browser.cookies.set(SESSION_COOKIE, token)  # the old cookie, replayed on the first service
        gone = await browser.get(f"{one}/console")
        assert gone.status_code == 303 and gone.headers["location"].startswith("/console/sign-in")

    # Both schedulers have been ticking every second all along: each tick ran once.
    await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - up)))
    rows = await clean_db.fetch(
        "SELECT action, metadata->>'tick' AS tick FROM audit_log WHERE action LIKE 'cron.%'"
    )
    for name in CRON_NAMES:
        ticks = Counter(datetime.fromisoformat(r["tick"]) for r in rows if r["action"] == f"cron.{name}")
        assert len(ticks) >= 3, f"{name} ran only {len(ticks)} ticks"
        assert max(ticks.values()) == 1, f"{name} ran a tick twice: {ticks.most_common(2)}"
    print(f"scenario in {time.monotonic() - up:.1f}s; cron ticks: {len(rows)} runs, each once")

"""Graceful shutdown: SIGTERM to a worker with 10 jobs running lets all 10 finish (none captured,
no new job picked); SIGTERM to the service under load resets no request.

Runs on the session's Postgres and Redis (nothing is stopped but our own processes).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from cli.embedded import free_port
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from tests.factories import create_admin, create_admin_session
from tests.procs import Proc, base_env, wait_http
from tests.reliability.support import summary, wait_until
from tests.smtp import smtp_server

# serial: drain windows of 0.2 s margins and SIGTERM under load
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

RUNNING_JOBS = 10
QUEUED_BEHIND = 5
SMTP_DELAY_SECONDS = 3.0


class SlowSmtp:
    """Accepts every message after ``delay`` seconds, so jobs are surely running at SIGTERM."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.delivered: Counter[str] = Counter()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        for line in envelope.content.decode(errors="replace").splitlines():
            if line.startswith("X-FMHL-Idempotency-Key:"):
                self.delivered[line.split(":", 1)[1].strip()] += 1
        return "250 OK"


@pytest.fixture
def slow_smtp() -> Iterator[tuple[int, SlowSmtp]]:
    handler = SlowSmtp(SMTP_DELAY_SECONDS)
    with smtp_server(handler) as port:
        yield port, handler


async def _send_email(redis: Any, key: str, defer_by_seconds: float | None = None) -> None:
    await enqueue(
        redis,
        "send_email",
        job_id=key,
        defer_by_seconds=defer_by_seconds,
        to="ops@example.test",
        template="low_balance",
        context={"provider_name": "Acme", "balance": "3.00", "lead_price": "10.00"},
        idempotency_key=key,
    )


@pytest.mark.timeout(120)
async def test_sigterm_lets_ten_running_jobs_finish(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, slow_smtp: tuple[int, SlowSmtp]
) -> None:
    smtp_port, smtp = slow_smtp
    env = base_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        EMAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        DB_POOL_MAX_SIZE="20",
    )
    running = [f"term-{n}" for n in range(RUNNING_JOBS)]
    for key in running:
        await _send_email(redis, key)
    worker = Proc(["worker", EMAIL_SEND], env).start()
    try:

        async def all_running() -> bool:
            return len(await redis.keys("arq:in-progress:term-*")) == RUNNING_JOBS

        await wait_until(all_running, 30, "10 jobs in progress", 0.05)
        behind = [f"behind-{n}" for n in range(QUEUED_BEHIND)]
        for key in behind:  # due a second after the signal: a stopping worker must not pick them
            await _send_email(redis, key, defer_by_seconds=1.0)
        worker.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 60)
        exit_s = time.monotonic() - signalled
    finally:
        worker.stop()
    sent = await clean_db.fetchval(
        "SELECT count(*) FROM email_outbox WHERE idempotency_key = ANY($1::text[]) AND status = 'sent'",
        running,
    )
    captured = await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue")
    started_behind = await clean_db.fetchval(
        "SELECT count(*) FROM email_outbox WHERE idempotency_key = ANY($1::text[])", behind
    )
    still_queued = await redis.zcard(EMAIL_SEND)
    print(
        f"\nworker SIGTERM: exit {code} after {exit_s:.2f}s with {RUNNING_JOBS} jobs running "
        f"({SMTP_DELAY_SECONDS:g}s SMTP each); finished={sent} delivered={sum(smtp.delivered.values())} "
        f"captured={captured}; queued behind: started={started_behind} still queued={still_queued}"
    )
    assert code == 0, worker.output()[-3000:]
    assert sent == RUNNING_JOBS and sorted(smtp.delivered) == sorted(running)
    assert captured == 0
    assert started_behind == 0 and still_queued == QUEUED_BEHIND


@dataclass
class Outcome:
    started: float
    route: str
    result: str  # HTTP status, or "refused" / "reset" / another transport error


def _classify(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "refused"  # nothing was sent: a client or load balancer retries elsewhere
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "reset"  # the request was sent and the connection died under it
    return type(exc).__name__


async def _client_loop(
    base_url: str,
    headers: dict[str, str],
    outcomes: list[Outcome],
    latencies: list[float],
    routed_away: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """A pooled keep-alive client behind a load balancer: it keeps sending on its connection
    (kube-proxy keeps an established connection on its pod); only once the server closes the
    connection *after a response* and the load balancer has dropped the pod does it go elsewhere."""
    routes = ["/health/live", "/health/ready", "/api/v1/admin/queues/dlq?limit=5"]
    n = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10, limits=limits) as client:
        while not stop.is_set():
            route = routes[n % len(routes)]
            n += 1
            started = time.monotonic()
            try:
                response = await client.get(route)
            except httpx.HTTPError as exc:
                outcomes.append(Outcome(started, route, _classify(exc)))
                return
            latencies.append(time.monotonic() - started)
            outcomes.append(Outcome(started, route, str(response.status_code)))
            if response.headers.get("connection") == "close" and routed_away.is_set():
                return  # the next request opens a new connection: to another pod
            await asyncio.sleep(0.01)


@pytest.mark.timeout(120)
async def test_sigterm_to_the_service_under_load_resets_no_request(
    database_url: str, redis_url: str, clean_db: Any
) -> None:
    key = Fernet.generate_key().decode()
    admin = await create_admin(clean_db, mfa_encryption_key=key)
    headers = {"Authorization": f"Bearer {await create_admin_session(clean_db, admin.user_id)}"}
    port = free_port()
    env = base_env(
        DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_LEVEL="WARNING", MFA_ENCRYPTION_KEY=key
    )
    drain_seconds = 2.0
    service = Proc(
        ["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", str(drain_seconds)], env
    ).start()
    outcomes: list[Outcome] = []
    latencies: list[float] = []
    routed_away, stop = asyncio.Event(), asyncio.Event()
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=30, proc=service)
        clients = [
            asyncio.ensure_future(
                _client_loop(f"http://127.0.0.1:{port}", headers, outcomes, latencies, routed_away, stop)
            )
            for _ in range(16)
        ]
        await asyncio.sleep(2.0)
        service.signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The load balancer saw readiness fail and dropped the pod well within the drain period.
        await asyncio.sleep(drain_seconds / 2)
        routed_away.set()
        code = await asyncio.to_thread(service.wait, 40)
        exited = time.monotonic() - signalled
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
        still_sending = sum(not c.done() for c in clients)
    finally:
        stop.set()
        service.stop()
    before = Counter(o.result for o in outcomes if o.started < signalled)
    draining = [o for o in outcomes if signalled + 0.2 <= o.started < signalled + drain_seconds - 0.2]
    after = Counter(o.result for o in outcomes if o.started >= signalled)
    ready_while_draining = Counter(o.result for o in draining if o.route == "/health/ready")
    live_while_draining = Counter(o.result for o in draining if o.route != "/health/ready")
    print(
        f"\nservice SIGTERM: exit {code} {exited:.2f}s after the signal (drain {drain_seconds:g}s); "
        f"requests before={dict(before)} after={dict(after)}; "
        f"while draining ready={dict(ready_while_draining)} others={dict(live_while_draining)}; "
        f"latency {summary(latencies)}"
    )
    assert code == 0, service.output()[-3000:]
    assert sum(before.values()) > 20 and set(before) <= {"200", "503"}
    # every request got an answer: no reset, and no client was left on a connection the server dropped
    failed = [o for o in outcomes if o.result not in ("200", "503")]
    assert not failed, (failed[:10], service.output()[-2000:])
    assert still_sending == 0
    # draining: still serving, readiness says "send no more"
    assert set(ready_while_draining) == {"503"} and set(live_while_draining) == {"200"}

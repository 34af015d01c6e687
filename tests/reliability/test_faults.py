"""Faults under load: Redis stopped for 10 s, Postgres stopped for 10 s, and each of them hung
(SIGSTOP: the kernel still accepts connections, nobody answers), against a real ``fmhl-ops
serve`` and a real worker, with probes, admin calls and enqueues running all along.

Readiness answers 503 during an outage and 200 within 5 s after; admin routes answer 200 or 503,
never 500; no probe hangs; the worker reconnects by itself (same process) and no job is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from cli.embedded import free_port
from shared.infra.db import init_connection
from shared.infra.redis import create_redis
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import HEARTBEAT_INTERVAL_SECONDS, read_heartbeats
from shared.jobs.queues import EMAIL_SEND
from tests.factories import create_admin, create_admin_session
from tests.helpers import signal_tree
from tests.procs import Proc, wait_http
from tests.reliability.support import OwnServers, own_servers, summary, wait_until, worker_env
from worker.failure import is_transient

# serial: stops and hangs its own Postgres/Redis and asserts recovery within seconds
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

OUTAGE_SECONDS = 10.0
HANG_SECONDS = 6.0
RECOVERY_LIMIT_SECONDS = 5.0
HEALTH_TIMEOUT_SECONDS = 1.0
ADMIN = ("admin_queues", "admin_dlq")
DB_COMMAND_TIMEOUT_SECONDS = 3.0
# Tries and backoff that outlast a 10 s outage; short timeouts so a hung dependency costs a try.
POLICIES = {
    "send_email": {
        "max_tries": 10,
        "timeout_seconds": 3,
        "backoff_base_seconds": 0.5,
        "backoff_max_seconds": 3,
    }
}


@dataclass
class Sample:
    started: float
    route: str
    status: int | str  # HTTP status, or the exception type of a call that got no answer
    seconds: float


@dataclass
class Stack:
    servers: OwnServers
    service: Proc
    worker: Proc
    base_url: str
    worker_url: str
    headers: dict[str, str]
    samples: list[Sample] = field(default_factory=list)
    enqueued: list[str] = field(default_factory=list)
    enqueue_retries: int = 0


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[OwnServers]:
    async with own_servers() as owned:
        yield owned


@pytest.fixture
async def stack(servers: OwnServers) -> AsyncIterator[Stack]:
    key = Fernet.generate_key().decode()
    conn = await asyncpg.connect(servers.database_url)
    await init_connection(conn)
    try:
        admin = await create_admin(conn, mfa_encryption_key=key)
        token = await create_admin_session(conn, admin.user_id)
    finally:
        await conn.close()
    port, worker_port = free_port(), free_port()
    env = worker_env(
        servers,
        MFA_ENCRYPTION_KEY=key,
        HEALTH_CHECK_TIMEOUT_SECONDS=str(HEALTH_TIMEOUT_SECONDS),
        DB_COMMAND_TIMEOUT_SECONDS=str(DB_COMMAND_TIMEOUT_SECONDS),
        JOB_POLICIES=orjson.dumps(POLICIES).decode(),
    )
    service = Proc(["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0"], env).start()
    worker = Proc(["worker", EMAIL_SEND], {**env, "WORKER_METRICS_PORT": str(worker_port)}).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=30, proc=service)
        wait_http(f"http://127.0.0.1:{worker_port}/health/live", timeout=30, proc=worker)
        yield Stack(
            servers,
            service,
            worker,
            f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{worker_port}",
            {"Authorization": f"Bearer {token}"},
        )
    finally:
        worker.stop()
        service.stop()


async def _poll(
    client: httpx.AsyncClient, stack: Stack, route: str, url: str, every: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await client.get(url, headers=stack.headers, timeout=20)
            status: int | str = response.status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        stack.samples.append(Sample(started, route, status, time.monotonic() - started))
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


async def _enqueue_loop(stack: Stack, tag: str, stop: asyncio.Event) -> None:
    """One send_email job every 50 ms; a call that fails is retried with the same job id."""
    redis = create_redis(stack.servers.redis_url, timeout_seconds=1)
    n = 0
    try:
        while not stop.is_set():
            job_id = f"{tag}-{n}"
            try:
                await enqueue(
                    redis,
                    "send_email",
                    job_id=job_id,
                    to="ops@example.test",
                    template="low_balance",
                    context={"provider_name": "Acme", "balance": "3.00", "lead_price": "10.00"},
                    idempotency_key=job_id,
                )
                stack.enqueued.append(job_id)
                n += 1
            except Exception:
                stack.enqueue_retries += 1
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def _load(stack: Stack, tag: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    async with httpx.AsyncClient() as client:
        tasks = [
            asyncio.ensure_future(_poll(client, stack, "ready", f"{stack.base_url}/health/ready", 0.1, stop)),
            asyncio.ensure_future(_poll(client, stack, "live", f"{stack.base_url}/health/live", 0.2, stop)),
            asyncio.ensure_future(
                _poll(client, stack, "worker_live", f"{stack.worker_url}/health/live", 0.2, stop)
            ),
            asyncio.ensure_future(
                _poll(client, stack, "admin_queues", f"{stack.base_url}/api/v1/admin/queues", 0.25, stop)
            ),
            asyncio.ensure_future(
                _poll(client, stack, "admin_dlq", f"{stack.base_url}/api/v1/admin/queues/dlq", 0.25, stop)
            ),
            asyncio.ensure_future(_enqueue_loop(stack, tag, stop)),
        ]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)


def _window(stack: Stack, route: str, start: float, end: float) -> list[Sample]:
    return [s for s in stack.samples if s.route == route and start <= s.started < end]


async def _first_ready_after(stack: Stack, since: float, limit: float) -> float:
    async def ready() -> bool:
        return any(s.status == 200 for s in _window(stack, "ready", since, float("inf")))

    await wait_until(ready, limit + 5, "readiness 200 after the outage", 0.05)
    first = min(
        s.started + s.seconds for s in _window(stack, "ready", since, float("inf")) if s.status == 200
    )
    return first - since


async def _all_jobs_done(stack: Stack) -> tuple[int, int]:
    """(sent, captured) once every enqueued job is sent or in the DLQ; fails on a missing one."""
    conn = await asyncpg.connect(stack.servers.database_url)
    try:

        async def settled() -> bool:
            done = await conn.fetchval(
                """SELECT count(*) FROM unnest($1::text[]) AS k(key)
                   WHERE EXISTS (SELECT 1 FROM email_outbox o
                                 WHERE o.idempotency_key = k.key AND o.status = 'sent')
                      OR EXISTS (SELECT 1 FROM dead_letter_queue d WHERE d.job_id = k.key)""",
                stack.enqueued,
            )
            return int(done) == len(stack.enqueued)

        with contextlib.suppress(AssertionError):
            await wait_until(settled, 60, "every enqueued job to be sent or captured", 0.5)
        sent = await conn.fetchval(
            "SELECT count(*) FROM email_outbox WHERE idempotency_key = ANY($1::text[]) AND status = 'sent'",
            stack.enqueued,
        )
        captured = await conn.fetchval(
            "SELECT count(*) FROM dead_letter_queue WHERE job_id = ANY($1::text[])", stack.enqueued
        )
    finally:
        await conn.close()
    return int(sent), int(captured)


async def _ongoing_jobs_when_idle(stack: Stack) -> int:
    """The worker's own count of running jobs (its heartbeat) once it has nothing to do."""
    redis = create_redis(stack.servers.redis_url, timeout_seconds=2)
    since = time.time()
    try:

        async def fresh_beat() -> bool:
            return any(b.last_beat > since for b in await read_heartbeats(redis))

        await wait_until(fresh_beat, HEARTBEAT_INTERVAL_SECONDS * 3, "a heartbeat from the idle worker")
        return max(b.ongoing_jobs for b in await read_heartbeats(redis) if b.last_beat > since)
    finally:
        await redis.aclose()


async def _outage(
    stack: Stack,
    name: str,
    stop: Callable[[], Awaitable[None]],
    start: Callable[[], Awaitable[None]],
    seconds: float,
) -> None:
    worker_pid = stack.worker.pid
    async with _load(stack, name):
        await asyncio.sleep(2.0)
        t_stop = time.monotonic()
        await stop()
        t_down = time.monotonic()
        await asyncio.sleep(seconds)
        t_restart = time.monotonic()
        await start()
        t_up = time.monotonic()
        recovery = await _first_ready_after(stack, t_up, RECOVERY_LIMIT_SECONDS)
        await asyncio.sleep(2.0)
    sent, captured = await _all_jobs_done(stack)
    idle_ongoing = await _ongoing_jobs_when_idle(stack)
    # Requests sent and answered while the dependency was down (not one straddling an edge).
    during = lambda route: [  # noqa: E731
        s for s in _window(stack, route, t_down + 0.1, t_restart) if s.started + s.seconds <= t_restart
    ]
    statuses = {
        route: Counter(str(s.status) for s in stack.samples if s.route == route)
        for route in ("ready", "live", "worker_live", "admin_queues", "admin_dlq")
    }
    fault_latency = [s.seconds for s in during("ready")]
    # admin calls that overlapped the fault (with Postgres hung one call can span all of it)
    admin_latency = [
        s.seconds
        for s in stack.samples
        if s.route in ADMIN and s.started < t_restart and s.started + s.seconds > t_down + 0.1
    ]
    print(
        f"\n{name}: {t_down - t_stop:.1f}s to stop, down {t_restart - t_down:.1f}s, "
        f"{t_up - t_restart:.1f}s to start; readiness 200 again {recovery:.2f}s after start\n"
        f"{name}: ready during fault {summary(fault_latency)} "
        f"statuses={dict(Counter(s.status for s in during('ready')))}\n"
        f"{name}: admin calls overlapping the fault {summary(admin_latency)}\n"
        f"{name}: all statuses {statuses}\n"
        f"{name}: enqueued={len(stack.enqueued)} (failed calls retried {stack.enqueue_retries}) sent={sent} "
        f"captured={captured} missing={len(stack.enqueued) - sent - captured}; "
        f"idle worker's heartbeat: ongoing jobs={idle_ongoing}"
    )
    assert stack.worker.process is not None and stack.worker.process.poll() is None, stack.worker.output()[
        -3000:
    ]
    assert stack.worker.pid == worker_pid
    assert during("ready") and all(s.status == 503 for s in during("ready")), during("ready")
    assert recovery <= RECOVERY_LIMIT_SECONDS
    for route in ("ready", "live", "worker_live", "admin_queues", "admin_dlq"):
        assert set(statuses[route]) <= {"200", "503"}, (
            route,
            statuses[route],
            stack.service.output()[-3000:],
        )
    assert set(statuses["live"]) == {"200"} and set(statuses["worker_live"]) == {"200"}
    assert max(fault_latency) < HEALTH_TIMEOUT_SECONDS + 2.0  # bounded by the check timeout, never a hang
    # bounded by DB_COMMAND_TIMEOUT_SECONDS and the pool's 10 s connect timeout, never a hang
    assert admin_latency and max(admin_latency) < 15.0
    assert sent + captured == len(stack.enqueued) > 50
    assert idle_ongoing == 0  # no job slot leaked by the outage: the worker can still take max_jobs


def _during_fault(stack: Stack, route: str) -> Counter[str]:
    return Counter(str(s.status) for s in stack.samples if s.route == route)


@pytest.mark.timeout(150)
async def test_redis_stopped_for_10s(stack: Stack) -> None:
    servers = stack.servers
    await _outage(stack, "redis_stopped", servers.stop_redis, servers.start_redis, OUTAGE_SECONDS)
    assert _during_fault(stack, "admin_queues")["503"] > 0  # queue state unreadable → 503, not zeros


@pytest.mark.timeout(150)
async def test_postgres_stopped_for_10s(stack: Stack) -> None:
    servers = stack.servers
    await _outage(stack, "postgres_stopped", servers.stop_postgres, servers.start_postgres, OUTAGE_SECONDS)
    assert _during_fault(stack, "admin_dlq")["503"] > 0  # sessions unreadable → 503, not 500


def _signal_redis(stack: Stack, sig: int) -> Callable[[], Awaitable[None]]:
    async def send() -> None:
        assert stack.servers.redis is not None and stack.servers.redis.process is not None
        signal_tree(stack.servers.redis.process.pid, sig)

    return send


def _signal_postgres(stack: Stack, sig: int) -> Callable[[], Awaitable[None]]:
    async def send() -> None:
        assert stack.servers.pg is not None and stack.servers.pg.process is not None
        signal_tree(stack.servers.pg.process.pid, sig)  # postmaster and every backend

    return send


@pytest.mark.timeout(150)
async def test_hung_redis_hangs_no_probe_and_no_worker(stack: Stack) -> None:
    await _outage(
        stack,
        "redis_hung",
        _signal_redis(stack, signal.SIGSTOP),
        _signal_redis(stack, signal.SIGCONT),
        HANG_SECONDS,
    )


@pytest.mark.timeout(150)
async def test_hung_postgres_hangs_no_probe_and_no_worker(stack: Stack) -> None:
    await _outage(
        stack,
        "postgres_hung",
        _signal_postgres(stack, signal.SIGSTOP),
        _signal_postgres(stack, signal.SIGCONT),
        HANG_SECONDS,
    )


async def test_connection_lost_mid_transaction_is_transient(servers: OwnServers) -> None:
    """What the chaos test met at a Postgres restart: ``Transaction.__aexit__`` replaces the lost
    connection with an ``InterfaceError``; the failure policy must retry it, not DLQ it as permanent."""
    conn = await asyncpg.connect(servers.database_url)
    try:
        with pytest.raises(asyncpg.InterfaceError) as lost:
            async with conn.transaction():
                await conn.execute("SELECT 1")
                await servers.stop_postgres()
                await conn.execute("SELECT 1")
    finally:
        await servers.start_postgres()
        await conn.close()
    print(f"\nlost mid-transaction: {type(lost.value).__name__} <- {type(lost.value.__context__).__name__}")
    assert is_transient(lost.value)


async def test_worker_sigterm_with_hung_redis_exits_in_bounded_time(servers: OwnServers) -> None:
    port = free_port()
    worker = Proc(["worker", EMAIL_SEND], worker_env(servers, WORKER_METRICS_PORT=str(port))).start()
    assert servers.redis is not None and servers.redis.process is not None
    redis_pid = servers.redis.process.pid
    hung = False
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=30, proc=worker)
        await asyncio.sleep(0.5)
        signal_tree(redis_pid, signal.SIGSTOP)
        hung = True
        await asyncio.sleep(1.0)
        worker.signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 40)
        exit_s = time.monotonic() - signalled
    finally:
        if hung:
            signal_tree(redis_pid, signal.SIGCONT)
        worker.stop()
    print(f"\nworker SIGTERM with Redis hung: exit {code} after {exit_s:.2f}s")
    assert code == 0, worker.output()[-3000:]
    assert exit_s < 10.0


async def test_an_enqueue_cut_by_a_redis_restart_raises_or_leaves_its_job(servers: OwnServers) -> None:
    """What lost a job in the chaos test: an enqueue whose connection a Redis restart cut must
    raise (the caller retries) or have written the job; it must never answer ``None`` ("that id
    exists already") for a job that is not there. arq's WATCH-based ``enqueue_job`` did: redis-py
    reports the lost connection at EXEC as ``WatchError``, which arq takes for a concurrent
    enqueue of the same id. Four enqueuers in a tight loop, as the chaos test's enqueuer retrying
    a failed call under the same id, through three restarts (each cut an enqueue nearly always)."""
    queue = "fmhl:test:enqueue-restart"
    redis = create_redis(servers.redis_url, timeout_seconds=2)
    answered: dict[str, str | None] = {}
    failed_calls = 0
    stop = asyncio.Event()

    async def enqueuer(k: int) -> None:
        nonlocal failed_calls
        n = 0
        while not stop.is_set():
            job_id = f"restart-{k}-{n}"
            while True:
                try:
                    answered[job_id] = await enqueue(
                        redis, "send_email", job_id=job_id, queue=queue, to="a@example.test"
                    )
                    break
                except Exception:
                    failed_calls += 1
                    await asyncio.sleep(0.05)
            n += 1

    try:
        enqueuers = [asyncio.create_task(enqueuer(k)) for k in range(4)]
        for _ in range(3):
            await asyncio.sleep(0.5)
            await servers.stop_redis()
            await asyncio.sleep(0.2)
            await servers.start_redis()
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*enqueuers)
        pipe = redis.pipeline(transaction=False)
        for job_id in answered:
            pipe.zscore(queue, job_id)
        queued = dict(zip(answered, await pipe.execute(), strict=True))
    finally:
        await redis.delete(queue, *(f"arq:job:{job_id}" for job_id in answered))
        await redis.aclose()
    said_exists = sorted(job_id for job_id, got in answered.items() if got is None)
    print(f"\nenqueues {len(answered)}, failed calls {failed_calls}, answered 'exists' {said_exists}")
    assert failed_calls > 0  # the restarts did cut enqueues
    assert all(answered[job_id] in (job_id, None) for job_id in answered)
    assert [job_id for job_id, score in queued.items() if score is None] == []

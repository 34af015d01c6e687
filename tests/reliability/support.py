"""What the reliability tests share: servers a test owns and may stop, a flaky SMTP server, a
fleet of real ``fmhl-ops worker`` processes, and percentiles.

The session's Postgres and Redis (``tests/infra.py``) are never stopped: a test that restarts a
server starts its own (``OwnServers``: embedded Postgres with a migrated database, embedded
Redis that saves its dataset on shutdown, so a restart keeps the queues, as production Redis
with persistence does).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from shared.infra.migrations import apply_migrations
from tests import pgbouncer
from tests.procs import Proc, base_env
from tests.smtp import smtp_server

DATABASE = "fmhl_reliability"


@dataclass
class OwnServers:
    """A Postgres and a Redis this test may stop, restart and kill; same ports, same data."""

    root: Path
    pg: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None
    redis_port: int = field(default_factory=free_port)
    bouncer: pgbouncer.PgBouncer | None = None

    @property
    def database_url(self) -> str:
        """Postgres itself (seeding and checks)."""
        assert self.pg is not None
        return self.pg.dsn_for(DATABASE)

    @property
    def app_database_url(self) -> str:
        """The workers' ``DATABASE_URL``: through PgBouncer when ``TEST_VIA_PGBOUNCER=1``."""
        return self.bouncer.url_for(self.database_url) if self.bouncer is not None else self.database_url

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    async def start(self) -> OwnServers:
        self.pg = await asyncio.to_thread(EmbeddedPostgres(self.root / "pg").start)
        admin = await asyncpg.connect(self.pg.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.database_url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        await self.start_redis()
        if os.environ.get("TEST_VIA_PGBOUNCER") == "1":
            self.bouncer = await asyncio.to_thread(pgbouncer.PgBouncer(self.pg.dsn).start)
        return self

    async def start_redis(self) -> None:
        server = EmbeddedRedis(self.root / "redis", port=self.redis_port, persist=True)
        self.redis = await asyncio.to_thread(server.start)

    async def stop_redis(self) -> None:
        """SIGTERM: Redis saves its dataset and exits (a restart, not a data loss)."""
        assert self.redis is not None
        await asyncio.to_thread(self.redis.stop)

    async def start_postgres(self) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.start)

    async def stop_postgres(self) -> None:
        assert self.pg is not None
        await asyncio.to_thread(self.pg.stop)

    def close(self) -> None:
        if self.bouncer is not None:
            self.bouncer.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def own_servers() -> Any:
    servers = OwnServers(Path(tempfile.mkdtemp(prefix="fmhl-reliability-")))
    try:
        yield await servers.start()
    finally:
        servers.close()


class FlakySmtp:
    """An SMTP server that answers 451 (try later) to the first ``failures`` deliveries of every
    message whose idempotency key starts with ``flaky-``, and accepts everything else."""

    def __init__(self, failures: int = 2) -> None:
        self.failures = failures
        self.deferred: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        key = str(message.get("X-FMHL-Idempotency-Key", ""))
        with self._lock:
            if key.startswith("flaky-") and self.deferred[key] < self.failures:
                self.deferred[key] += 1
                return "451 4.3.0 Try again later"
            self.delivered[key] += 1
        return "250 OK"


@contextlib.contextmanager
def flaky_smtp(failures: int = 2) -> Iterator[tuple[int, FlakySmtp]]:
    handler = FlakySmtp(failures)
    with smtp_server(handler) as port:
        yield port, handler


class WorkerFleet:
    """Real ``fmhl-ops worker QUEUE`` processes, one slot per entry of ``queues``."""

    def __init__(self, queues: Sequence[str], env: dict[str, str]) -> None:
        self.queues = list(queues)
        self.env = env
        self.procs: list[Proc] = []
        self.retired: list[Proc] = []
        self.kills = 0
        self.restarts = 0

    def start(self) -> WorkerFleet:
        self.procs = [Proc(["worker", queue], self.env).start() for queue in self.queues]
        return self

    def kill_and_restart(self, slot: int) -> None:
        proc = self.procs[slot]
        proc.signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.kills += 1
        self.retired.append(proc)
        self.procs[slot] = Proc(["worker", self.queues[slot]], self.env).start()
        self.restarts += 1

    def unexpected_exits(self) -> list[str]:
        """Workers that exited although nobody killed them, with the tail of their output."""
        return [
            f"worker {self.queues[i]} exited {p.process.returncode}:\n{p.output()[-3000:]}"
            for i, p in enumerate(self.procs)
            if p.process is not None and p.process.poll() is not None
        ]

    def stop(self, timeout: float = 30.0) -> list[int | None]:
        codes = [proc.stop(timeout=timeout) for proc in self.procs]
        for proc in self.retired:
            proc.stop(timeout=1)
        return codes

    def output(self) -> str:
        return "\n".join(p.output()[-2000:] for p in self.procs)


def worker_env(servers: OwnServers, **extra: str) -> dict[str, str]:
    return base_env(
        DATABASE_URL=servers.app_database_url, REDIS_URL=servers.redis_url, LOG_LEVEL="WARNING", **extra
    )


def percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> str:
    return (
        f"n={len(values)} p50={percentile(values, 50) * 1000:.1f}ms "
        f"p99={percentile(values, 99) * 1000:.1f}ms max={max(values, default=float('nan')) * 1000:.1f}ms"
    )


async def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> float:
    """Await ``predicate()`` until true; returns the seconds it took. Errors count as false."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(Exception):
            if await predicate():
                return time.monotonic() - started
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

"""The connection budget holds with real processes: worker processes started with the budget's
pool size (``K8S_POOL_MAX_SIZE``, what k8s/ gives every pod) against a Postgres of our own whose
``max_connections`` is exactly enough for them (plus the test's one monitoring connection and the
superuser-reserved slots, which a non-superuser can never use), through a failure storm: every
job captured once, no "too many clients" error, nothing spooled, and the pools really were
saturated (so one connection more would have failed: with one slot fewer, this test fails with
``TooManyConnectionsError`` in the workers' logs).

The workers connect as a role without SUPERUSER, so the reserved slots are not theirs.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cli.embedded import EmbeddedPostgres
from shared.infra.db_budget import K8S_POOL_MAX_SIZE, per_pod_connections
from shared.infra.migrations import apply_migrations
from shared.infra.redis import DLQ_SPOOL_KEY, DLQ_SPOOL_REJECTED_KEY
from shared.jobs.enqueue import enqueue
from tests.procs import Proc, base_env

pytestmark = pytest.mark.e2e

WORKERS = 3
STORM = 300
RESERVED = 3  # superuser_reserved_connections: never usable by the workers' role
MONITOR = 1  # this test's own (superuser) connection: it takes a slot like any other
APP_ROLE = "fmhl_app"
DATABASE = "fmhl_budget"
TOO_MANY = ("too many clients", "remaining connection slots", "TooManyConnections")


@pytest.fixture
async def tight_postgres() -> AsyncIterator[EmbeddedPostgres]:
    budget = WORKERS * per_pod_connections(K8S_POOL_MAX_SIZE)
    root = Path(tempfile.mkdtemp(prefix="fmhl-budget-pg-"))
    server = EmbeddedPostgres(root / "pg", max_connections=budget + MONITOR + RESERVED)
    await asyncio.to_thread(server.start)
    try:
        admin = await asyncpg.connect(server.dsn)
        try:
            assert await admin.fetchval("SHOW superuser_reserved_connections") == str(RESERVED)
            await admin.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
            await admin.execute(f"CREATE DATABASE {DATABASE} OWNER {APP_ROLE}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(server.dsn_for(DATABASE), user=APP_ROLE)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        yield server
    finally:
        await asyncio.to_thread(server.destroy)
        shutil.rmtree(root, ignore_errors=True)


async def test_workers_at_the_budget_capture_a_storm_without_too_many_clients(
    tight_postgres: EmbeddedPostgres, redis_url: str, redis: Any
) -> None:
    budget = WORKERS * per_pod_connections(K8S_POOL_MAX_SIZE)
    app_url = tight_postgres.dsn_for(DATABASE).replace("postgres@", f"{APP_ROLE}@", 1)
    job_ids = [f"budget-storm-{i}" for i in range(STORM)]
    for job_id in job_ids:  # an unknown lead: NotFound, a permanent failure captured at once
        await enqueue(redis, "distribute_lead", job_id=job_id, lead_id=str(uuid.uuid4()))
    env = base_env(DATABASE_URL=app_url, REDIS_URL=redis_url, DB_POOL_MAX_SIZE=str(K8S_POOL_MAX_SIZE))
    monitor = await asyncpg.connect(tight_postgres.dsn_for(DATABASE))  # superuser: a reserved slot
    peak = 0
    workers = [Proc(["worker", "distribute_lead"], env).start() for _ in range(WORKERS)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            in_use = await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", APP_ROLE
            )
            peak = max(peak, in_use)
            if await monitor.fetchval("SELECT count(*) FROM dead_letter_queue") >= STORM:
                break
            if any(not w.running() for w in workers):
                break
            await asyncio.sleep(0.05)
        rows = await monitor.fetch("SELECT job_id, count(*) AS n FROM dead_letter_queue GROUP BY job_id")
    finally:
        for worker in workers:
            worker.stop()
        await monitor.close()
    output = "".join(w.output() for w in workers)
    for marker in TOO_MANY:
        assert marker not in output, output[-3000:]
    assert sorted(r["job_id"] for r in rows) == sorted(job_ids), output[-3000:]
    assert {r["n"] for r in rows} == {1}
    assert await redis.llen(DLQ_SPOOL_KEY) == 0 and await redis.llen(DLQ_SPOOL_REJECTED_KEY) == 0
    # The budget was used up, not merely respected: every pool was full at some point.
    assert peak == budget, f"peak {peak} app connections, budget {budget}"

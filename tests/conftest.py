"""Shared fixtures: a fresh migrated database per run, Redis flushed per test, settings.

See ``tests/infra.py`` for where Postgres and Redis come from. ``TEST_VIA_PGBOUNCER=1`` puts a
PgBouncer in transaction mode (``tests/pgbouncer.py``) between the application side and that
database: ``database_url`` (and so ``pool``, ``settings`` and every process a test starts) goes
through it, while ``direct_database_url`` (DDL, migrations) does not.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis

from shared.infra.config import Settings
from shared.infra.db import create_pool
from shared.infra.metrics import Metrics
from shared.infra.migrations import apply_migrations
from shared.infra.redis import create_redis
from tests import pgbouncer
from tests.infra import Backends, backends, database_dsn
from tests.secret_scan import secret_scan  # noqa: F401 - autouse: no secret in any log line of the session

APP_TABLES = (
    "redrive_task_items",
    "redrive_task_chunks",
    "redrive_tasks",
    "dead_letter_queue",
    "audit_log",
    "email_outbox",
    "report_exports",
    "ledger_entries",
    "lead_assignments",
    "leads",
    "providers",
    "admin_sessions",
    "login_attempts",
    "users",
    "cron_runs",
)


@pytest.fixture(scope="session")
def test_backends() -> Iterator[Backends]:
    with backends() as found:
        yield found


@pytest.fixture(scope="session")
async def direct_database_url(test_backends: Backends) -> AsyncIterator[str]:
    name = f"fmhl_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(test_backends.postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = database_dsn(test_backends.postgres_admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    yield dsn
    admin = await asyncpg.connect(test_backends.postgres_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def database_url(direct_database_url: str, test_backends: Backends) -> Iterator[str]:
    """The application's ``DATABASE_URL``: the test database, through PgBouncer when
    ``TEST_VIA_PGBOUNCER=1``."""
    if os.environ.get("TEST_VIA_PGBOUNCER") != "1":
        yield direct_database_url
        return
    with pgbouncer.running(test_backends.postgres_admin_dsn) as bouncer:
        yield bouncer.url_for(direct_database_url)


@pytest.fixture(scope="session")
def redis_url(test_backends: Backends) -> str:
    return test_backends.redis_url


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, health_check_timeout_seconds=1.0)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[Any]:
    settings = Settings(database_url=database_url, redis_url=None, db_pool_max_size=20)
    db_pool = await create_pool(settings, application_name="fmhl-tests")
    yield db_pool
    await db_pool.close()


@pytest.fixture
async def conn(pool: Any) -> AsyncIterator[Any]:
    """A connection inside a transaction that is rolled back after the test."""
    async with pool.acquire() as connection:
        tx = connection.transaction()
        await tx.start()
        try:
            yield connection
        finally:
            await tx.rollback()


@pytest.fixture
async def clean_db(pool: Any) -> AsyncIterator[Any]:
    """For tests that must see commits from other connections or processes: truncate around."""
    await pool.execute(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY CASCADE")
    yield pool
    await pool.execute(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY CASCADE")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    client = create_redis(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()

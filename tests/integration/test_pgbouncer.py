"""Every process through a real PgBouncer (Debian's ``pgbouncer``) in ``pool_mode = transaction``.

What a new user met before the fix: ``fmhl-ops admin create`` failed with asyncpg's
prepared-statement error, and a worker's failure storm lost captures to
``DuplicatePreparedStatementError`` (the records were parked as rejected instead of reaching the
DLQ table). Here: ``migrate`` (concurrently, its advisory lock transaction-scoped),
``admin create``, and two ``fmhl-ops worker distribute_lead`` processes capturing a storm of 200
permanent failures: 200 rows, one per job, nothing spooled or parked, no prepared-statement error.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet

from shared.dlq.capture import FailureRecord, capture
from shared.dlq.spool import drain_spool
from shared.infra.config import Settings
from shared.infra.db import ASYNCPG_STATEMENT_CACHE_SIZE, Database, create_pool
from shared.infra.migrations import default_sql_dir
from shared.infra.redis import DLQ_SPOOL_KEY, DLQ_SPOOL_REJECTED_KEY
from shared.jobs.enqueue import enqueue
from tests import pgbouncer
from tests.infra import Backends, database_dsn
from tests.procs import FMHL_OPS, Proc, base_env

pytestmark = pytest.mark.e2e

STORM = 200
PREPARED_STATEMENT_ERRORS = ("PreparedStatement", "prepared statement")


@pytest.fixture(scope="module")
def bouncer(test_backends: Backends) -> Iterator[pgbouncer.PgBouncer]:
    assert pgbouncer.available(), "pgbouncer not found: `make tools` installs Debian's pgbouncer"
    # A small server pool, so the clients (processes, pools) share server connections, as in prod.
    with pgbouncer.running(test_backends.postgres_admin_dsn, default_pool_size=4) as running:
        yield running


@pytest.fixture
async def empty_database(test_backends: Backends) -> AsyncIterator[str]:
    name = f"fmhl_bouncer_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(test_backends.postgres_admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_dsn(test_backends.postgres_admin_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FMHL_OPS, *args], input=stdin, env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def _cache_size(url: str, configured: int | None = None) -> int | None:
    settings = Settings(database_url=url, redis_url=None, db_statement_cache_size=configured)
    pool = await create_pool(settings, application_name="cache-test")
    try:
        size: int | None = pool.statement_cache.size
        return size
    finally:
        await pool.close()


async def test_statement_cache_is_off_behind_pgbouncer_and_on_direct(
    bouncer: pgbouncer.PgBouncer, direct_database_url: str
) -> None:
    assert await _cache_size(bouncer.url_for(direct_database_url)) == 0
    assert await _cache_size(direct_database_url) == ASYNCPG_STATEMENT_CACHE_SIZE
    assert await _cache_size(direct_database_url, configured=7) == 7


async def test_concurrent_migrates_through_pgbouncer_apply_each_file_once(
    bouncer: pgbouncer.PgBouncer, empty_database: str
) -> None:
    env = base_env(DATABASE_URL=bouncer.url_for(empty_database))
    results = await asyncio.gather(*(asyncio.to_thread(_run, ["migrate"], env) for _ in range(3)))
    for result in results:
        assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(empty_database)
    try:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        held = await conn.fetchval(  # this database only: a shared server runs other sessions' tests
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    finally:
        await conn.close()
    assert names == sorted(p.name for p in default_sql_dir().glob("*.sql"))
    assert held == 0, "an advisory lock outlived its transaction on a pooled server connection"


async def test_migrate_prefers_database_direct_url(empty_database: str) -> None:
    env = base_env(
        DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere", DATABASE_DIRECT_URL=empty_database
    )
    result = await asyncio.to_thread(_run, ["migrate"], env)
    assert result.returncode == 0, result.stderr


async def test_admin_create_through_pgbouncer(
    bouncer: pgbouncer.PgBouncer, database_url: str, direct_database_url: str, clean_db: Any
) -> None:
    env = base_env(
        DATABASE_URL=bouncer.url_for(direct_database_url), MFA_ENCRYPTION_KEY=Fernet.generate_key().decode()
    )
    for n in range(3):  # several runs: each one's statements land on server connections others used
        result = await asyncio.to_thread(
            _run,
            ["admin", "create", "--email", f"ops{n}@example.test", "--role", "admin"],
            env,
            "correct horse battery staple\n",
        )
        assert result.returncode == 0, result.stderr
        assert [line for line in result.stdout.splitlines() if line.startswith("otpauth://")], result.stdout
    assert await clean_db.fetchval("SELECT count(*) FROM users") == 3


async def test_failure_storm_through_pgbouncer_is_captured_whole(
    bouncer: pgbouncer.PgBouncer, direct_database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    job_ids = [f"bouncer-storm-{i}" for i in range(STORM)]
    for job_id in job_ids:  # an unknown lead: NotFound, a permanent failure captured at once
        await enqueue(redis, "distribute_lead", job_id=job_id, lead_id=str(uuid.uuid4()))
    env = base_env(DATABASE_URL=bouncer.url_for(direct_database_url), REDIS_URL=redis_url)
    workers = [Proc(["worker", "distribute_lead"], env).start() for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") >= STORM:
                break
            if any(not w.running() for w in workers):
                break
            await asyncio.sleep(0.2)
    finally:
        for worker in workers:
            worker.stop()
    output = "".join(w.output() for w in workers)
    rows = await clean_db.fetch("SELECT job_id, count(*) AS n FROM dead_letter_queue GROUP BY job_id")
    assert sorted(r["job_id"] for r in rows) == sorted(job_ids), output[-3000:]
    assert {r["n"] for r in rows} == {1}
    assert await redis.llen(DLQ_SPOOL_KEY) == 0, "captures were spooled"
    assert await redis.llen(DLQ_SPOOL_REJECTED_KEY) == 0, "captures were parked as rejected"
    for marker in PREPARED_STATEMENT_ERRORS:
        assert marker not in output, output[-3000:]


async def test_pool_through_pgbouncer_runs_named_queries_and_transactions(
    bouncer: pgbouncer.PgBouncer, direct_database_url: str
) -> None:
    """Many concurrent transactions over few server connections: no statement leaks across."""
    settings = Settings(
        database_url=bouncer.url_for(direct_database_url), redis_url=None, db_pool_max_size=10
    )
    pool = await create_pool(settings, application_name="bouncer-test")
    try:

        async def one(i: int) -> int:
            async with pool.acquire() as conn, conn.transaction():
                value: int = await conn.fetchval("SELECT $1::int + 1", i)
                assert await conn.fetchval("SELECT $1::jsonb", {"i": i}) == {"i": i}
                return value

        assert await asyncio.gather(*(one(i) for i in range(300))) == [i + 1 for i in range(300)]
    finally:
        await pool.close()


def _failure(job_id: str) -> FailureRecord:
    return FailureRecord(
        queue="email_send",
        job_id=job_id,
        function="send_email",
        args=[],
        kwargs={"to": "a@b.c"},
        error_type="ValueError",
        error_message="bad template",
        stack_trace="Traceback ...",
        fingerprint="fp-bouncer",
        attempts=1,
        reason="permanent",
        failed_at=datetime.now(UTC),
    )


async def test_a_prepared_statement_error_spools_the_capture_never_parks_it(
    test_backends: Backends, direct_database_url: str, redis: Any, clean_db: Any
) -> None:
    """A statement cache left on behind PgBouncer (``DB_STATEMENT_CACHE_SIZE=100``): another
    client's ``DEALLOCATE ALL`` on the one shared server connection drops the capture's cached
    insert, and the next capture meets ``prepared statement "__asyncpg_stmt_N__" does not
    exist``. That is the connection, not the record: it is spooled (and drained into the table by
    a pool without the cache), never parked in the rejected list."""
    with pgbouncer.running(test_backends.postgres_admin_dsn, default_pool_size=1) as one_server:
        url = one_server.url_for(direct_database_url)
        settings = Settings(database_url=url, redis_url=None, db_statement_cache_size=100, db_pool_max_size=1)
        cached = await create_pool(settings, application_name="cache-left-on")
        other = await asyncpg.connect(url, statement_cache_size=0)
        try:
            db = Database.from_pool(settings, cached)
            assert await capture(db, redis, _failure("bouncer-cache-1"), None) == "stored"
            await other.execute("DEALLOCATE ALL")  # the same server connection: one per pool
            outcome = await capture(db, redis, _failure("bouncer-cache-2"), None)
        finally:
            await other.close()
            await cached.close()
        assert await redis.llen(DLQ_SPOOL_REJECTED_KEY) == 0, await redis.lrange(
            DLQ_SPOOL_REJECTED_KEY, 0, -1
        )
        assert outcome == "spooled"
        fixed = await create_pool(
            Settings(database_url=url, redis_url=None, db_statement_cache_size=0), application_name="fixed"
        )
        try:
            assert (await drain_spool(fixed, redis)).inserted == 1
        finally:
            await fixed.close()
    job_ids = await clean_db.fetch("SELECT job_id FROM dead_letter_queue ORDER BY job_id")
    assert [r["job_id"] for r in job_ids] == ["bouncer-cache-1", "bouncer-cache-2"]

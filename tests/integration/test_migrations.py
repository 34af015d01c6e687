from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.infra.migrations import default_sql_dir, migrate
from tests.infra import Backends, database_dsn
from tests.procs import FMHL_OPS, base_env

EXPECTED_TABLES = {
    "users",
    "admin_sessions",
    "providers",
    "ledger_entries",
    "leads",
    "lead_assignments",
    "report_exports",
    "email_outbox",
    "audit_log",
    "dead_letter_queue",
    "schema_migrations",
}


@pytest.fixture
async def empty_database(test_backends: Backends) -> AsyncIterator[str]:
    name = f"fmhl_mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(test_backends.postgres_admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_dsn(test_backends.postgres_admin_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_fresh_database_gets_every_table_and_second_run_is_a_noop(empty_database: str) -> None:
    first = await migrate(empty_database)
    assert first == ["001_initial.sql"] or first[0] == "001_initial.sql"
    assert EXPECTED_TABLES <= await _tables(empty_database)
    conn = await asyncpg.connect(empty_database)
    before = await conn.fetch("SELECT name, checksum, applied_at FROM schema_migrations ORDER BY name")
    await conn.close()
    assert await migrate(empty_database) == []
    conn = await asyncpg.connect(empty_database)
    after = await conn.fetch("SELECT name, checksum, applied_at FROM schema_migrations ORDER BY name")
    await conn.close()
    assert before == after


async def test_dlq_unique_queue_and_job_id_is_enforced(empty_database: str) -> None:
    await migrate(empty_database)
    conn = await asyncpg.connect(empty_database)
    insert = """INSERT INTO dead_letter_queue (queue_name, job_id, function, error_type, fingerprint,
                attempts, reason, failed_at) VALUES ('email_send', 'j1', 'send_email', 'E', 'fp', 1,
                'exhausted', now())"""
    await conn.execute(insert)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert)
    await conn.close()


async def test_two_migrators_at_once_apply_each_file_once(empty_database: str) -> None:
    results = await asyncio.gather(migrate(empty_database), migrate(empty_database))
    # The lock is per step (transaction-scoped), so the two may share the work: every file is
    # applied by exactly one of them.
    files = sorted(path.name for path in default_sql_dir().glob("*.sql"))
    assert sorted(results[0] + results[1]) == files
    conn = await asyncpg.connect(empty_database)
    count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    await conn.close()
    assert count == len(list(default_sql_dir().glob("*.sql")))


def test_cli_migrators_started_together_both_succeed(empty_database: str) -> None:
    env = base_env(DATABASE_URL=empty_database)
    procs = [subprocess.Popen([FMHL_OPS, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
    procs.append(
        subprocess.Popen([FMHL_OPS, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    )
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # "applied N migration(s): a.sql, b.sql" or "... (up to date)": together, each file exactly once
    # (the lock is per step, so the two may share the work).
    applied = [
        name
        for out, _ in outputs
        for name in out.decode().strip().partition(": ")[2].split(", ")
        if name.endswith(".sql")
    ]
    assert sorted(applied) == sorted(path.name for path in default_sql_dir().glob("*.sql")), outputs


async def test_edited_applied_file_is_refused_naming_the_file(empty_database: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    await migrate(empty_database, sql_dir)
    (sql_dir / "001_initial.sql").write_text((sql_dir / "001_initial.sql").read_text() + "\n-- edited\n")
    env = base_env(DATABASE_URL=empty_database, SQL_DIR=str(sql_dir))
    result = subprocess.run([FMHL_OPS, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "001_initial.sql" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_failing_migration_leaves_nothing_half_applied(empty_database: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(default_sql_dir(), sql_dir)
    (sql_dir / "999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();\n")
    env = base_env(DATABASE_URL=empty_database, SQL_DIR=str(sql_dir))
    result = subprocess.run([FMHL_OPS, "migrate"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "999_broken.sql" in result.stderr
    tables = await _tables(empty_database)
    assert "half_done" not in tables
    assert "dead_letter_queue" in tables

"""Forward-only SQL migrations from ``sql/NNN_name.sql``.

The runner records each file's name and SHA-256 checksum in ``schema_migrations``, refuses to
run when an applied file was edited or removed (the message names the file), and applies each
file in its own transaction. Running it again is a no-op.

Replicas migrating at once take turns on a Postgres advisory lock that is **transaction-scoped**
(``pg_advisory_xact_lock``): each step (check the history; apply one file) is one transaction
that takes the lock first and reads the history again under it, so a file another replica has
just applied is skipped. No lock outlives its transaction, which is what makes ``migrate``
correct through PgBouncer in transaction mode, where consecutive statements may run on different
server connections (a session lock taken there is released on another, or never). A direct URL
(``DATABASE_DIRECT_URL``) is still preferred when there is one (README, "PgBouncer").
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.infra.db import Conn

# Arbitrary but fixed: "fmhl" in ASCII. Every migrator contends for this one lock.
ADVISORY_LOCK_KEY = 0x666D686C
_FILE_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT name, checksum FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)"


class MigrationError(RuntimeError):
    """The migration history and the files on disk disagree, or a file failed."""


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    checksum: str
    sql: str


def default_sql_dir() -> Path:
    """``SQL_DIR`` if set (the Docker image), else ``sql/`` beside the package."""
    configured = os.environ.get("SQL_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "sql"


def load_migrations(sql_dir: Path) -> list[Migration]:
    if not sql_dir.is_dir():
        raise MigrationError(f"migrations directory {sql_dir} does not exist")
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        if not _FILE_NAME.match(path.name):
            raise MigrationError(f"{path.name}: migration files must be named NNN_snake_case.sql")
        text = path.read_text(encoding="utf-8")
        checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
        migrations.append(Migration(path.name, checksum, text))
    return migrations


LOCK = "SELECT pg_advisory_xact_lock($1)"


async def _locked_history(conn: Conn, migrations: list[Migration]) -> dict[str, str]:
    """Inside a transaction: take the lock, read the history, refuse a removed or edited file."""
    await conn.execute(LOCK, ADVISORY_LOCK_KEY)
    await conn.execute(CREATE_TABLE)
    applied = {row["name"]: row["checksum"] for row in await conn.fetch(SELECT_APPLIED)}
    on_disk = {m.name for m in migrations}
    for name in sorted(applied):
        if name not in on_disk:
            raise MigrationError(f"{name} was applied but is missing from the migrations directory")
    for migration in migrations:
        recorded = applied.get(migration.name)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"{migration.name} was edited after it was applied (checksum mismatch); "
                "add a new migration instead"
            )
    return applied


async def apply_migrations(conn: Conn, sql_dir: Path | None = None) -> list[str]:
    """Apply pending migrations on ``conn``; returns the names applied now."""
    migrations = load_migrations(sql_dir or default_sql_dir())
    async with conn.transaction():
        applied = await _locked_history(conn, migrations)
    done = []
    for migration in migrations:
        if migration.name in applied:
            continue
        try:
            async with conn.transaction():
                # Under the lock, again: another replica may have applied it since we looked.
                if migration.name in await _locked_history(conn, migrations):
                    continue
                await conn.execute(migration.sql)
                await conn.execute(INSERT_APPLIED, migration.name, migration.checksum)
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"{migration.name} failed: {exc}") from exc
        done.append(migration.name)
    return done


async def migrate(dsn: str, sql_dir: Path | None = None) -> list[str]:
    """Migrate the database at ``dsn`` over one connection with no statement cache (a pooler may
    stand in between; the few statements of a run gain nothing from a cache)."""
    conn = await asyncpg.connect(
        dsn, server_settings={"application_name": "fmhl-ops-migrate"}, statement_cache_size=0, timeout=10
    )
    try:
        return await apply_migrations(conn, sql_dir)
    finally:
        await conn.close()

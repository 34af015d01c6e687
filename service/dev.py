"""``fmhl-ops dev``: everything on one machine with one command.

Uses ``DATABASE_URL``/``REDIS_URL`` when set; otherwise starts embedded Postgres and Redis with
data under ``.run/`` (kept between runs), migrates, and serves on :8000. Ctrl-C stops
everything it started.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import asyncpg

from shared.config import Settings
from shared.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.migrations import migrate

RUN_DIR = Path(".run")
DEV_DATABASE = "fmhl"


async def _ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')  # name is our constant, not input
    finally:
        await conn.close()


def _pid(server: EmbeddedPostgres | EmbeddedRedis) -> str:
    return str(server.process.pid) if server.process is not None else "?"


def run_dev(settings: Settings, *, host: str, port: int) -> int:
    from service.app import create_app
    from service.server import serve

    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        if settings.database_url is None:
            pg = EmbeddedPostgres(RUN_DIR.resolve() / "postgres").start()
            started.append(pg)
            asyncio.run(_ensure_database(pg.dsn, DEV_DATABASE))
            settings = dataclasses.replace(settings, database_url=pg.dsn_for(DEV_DATABASE))
            print(f"started embedded Postgres (pid {_pid(pg)}) at {settings.database_url}")
        if settings.redis_url is None:
            redis = EmbeddedRedis(RUN_DIR.resolve() / "redis", persist=True).start()
            started.append(redis)
            settings = dataclasses.replace(settings, redis_url=redis.url)
            print(
                f"started embedded Redis (pid {redis.process.pid if redis.process else '?'}) at {redis.url}"
            )
        applied = asyncio.run(migrate(settings.require_database_url()))
        print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
        print(f"serving on http://{host}:{port}  (try: curl http://{host}:{port}/health/ready)")
        app = create_app(settings)
        asyncio.run(serve(app, host, port, drain_seconds=0.0))
        return 0
    finally:
        for server in reversed(started):
            server.stop()

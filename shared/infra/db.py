"""Postgres access: the asyncpg pool, its codecs, and the one timed query helper.

Every repository query goes through ``fetch``/``fetchrow``/``fetchval``/``execute`` here with a
stable name. Connections from our pool carry a ``QueryObserver`` that records
``fmhl_db_query_duration_seconds{query}`` and logs ``slow_query`` above ``SLOW_QUERY_MS``.

``Database`` connects in the background with capped exponential backoff, so a service whose
Postgres is down or hangs still starts and answers ``/health/live``; until the pool exists,
``Database.pool`` raises ``DependencyUnavailable``.

Behind a pooler (PgBouncer in ``pool_mode = transaction``), consecutive statements of one client
may run on different server connections, so nothing may rely on session state: no session
advisory locks, ``SET``, ``LISTEN`` or temp tables outside a transaction (we use none: locks are
``pg_advisory_xact_lock``), and no named prepared statements, which asyncpg's statement cache
creates. PgBouncer 1.18 (Debian 12) cannot track them (``max_prepared_statements`` came in 1.21),
so ``DB_STATEMENT_CACHE_SIZE`` defaults to "auto": the pool's first connection compares the
backend pid the server reported at connect with ``pg_backend_pid()`` (a pooler hands out its
own), and the pool uses no cache behind a pooler and asyncpg's default cache of 100 otherwise,
since the cache saves a round trip per query on a direct connection (README, "PgBouncer").

Every acquire from our pool is timed into ``fmhl_db_pool_wait_seconds``: a process that waits for
connections has a pool too small for its concurrency (the connection budget, README).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import asyncpg.pool
import orjson

from shared.infra.config import Settings
from shared.infra.errors import DependencyUnavailable
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics

Conn = Any  # asyncpg.Connection or pool proxy; asyncpg ships no type information


@dataclass(frozen=True, slots=True)
class QueryObserver:
    metrics: Metrics | None
    slow_query_ms: int

    def observe(self, name: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe(self.metrics.db_query_duration_seconds, seconds, {"query": name})
        if seconds * 1000 >= self.slow_query_ms:
            log_event("WARNING", "slow_query", query=name, duration_ms=round(seconds * 1000, 1))


class ObservedConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg connection that carries the process's query observer."""

    query_observer: QueryObserver | None = None


async def _timed(conn: Conn, name: str, method: str, sql: str, args: tuple[Any, ...]) -> Any:
    started = time.perf_counter()
    try:
        return await getattr(conn, method)(sql, *args)
    finally:
        observer: QueryObserver | None = getattr(conn, "query_observer", None)
        if observer is not None:
            observer.observe(name, time.perf_counter() - started)


async def fetch(conn: Conn, name: str, sql: str, *args: Any) -> list[Any]:
    result: list[Any] = await _timed(conn, name, "fetch", sql, args)
    return result


async def fetchrow(conn: Conn, name: str, sql: str, *args: Any) -> Any:
    return await _timed(conn, name, "fetchrow", sql, args)


async def fetchval(conn: Conn, name: str, sql: str, *args: Any) -> Any:
    return await _timed(conn, name, "fetchval", sql, args)


async def execute(conn: Conn, name: str, sql: str, *args: Any) -> str:
    status: str = await _timed(conn, name, "execute", sql, args)
    return status


async def init_connection(conn: Conn) -> None:
    """json/jsonb via orjson. numeric already maps to Decimal in asyncpg."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            encoder=lambda value: orjson.dumps(value).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


class TimedPool(asyncpg.pool.Pool):  # type: ignore[misc]
    """asyncpg pool that reports how long each acquire waited for a connection.

    ``Pool.acquire()``, and ``pool.fetch``/``execute``/... through it, all go through ``_acquire``;
    a timed-out acquire is reported too (it waited the longest).
    """

    wait_observer: Callable[[float], None] | None = None
    statement_cache: StatementCacheConnector | None = None

    async def _acquire(self, timeout: float | None) -> Any:
        started = time.perf_counter()
        try:
            return await super()._acquire(timeout)
        finally:
            if self.wait_observer is not None:
                self.wait_observer(time.perf_counter() - started)


ASYNCPG_STATEMENT_CACHE_SIZE = 100  # asyncpg's own default

# Errors about the connection's prepared statements, not about the query or its parameters: a
# statement cache left on behind a transaction-mode pooler (``DB_STATEMENT_CACHE_SIZE`` set to a
# cache behind PgBouncer 1.18, or a pooler the auto check cannot see) has its named statements
# land on server connections other clients share (``prepared statement "__asyncpg_stmt_N__"
# does not exist`` / ``... already exists``), and a cached plan a schema change invalidated. The
# same statement succeeds on another connection or once the configuration is fixed: a capture
# that meets one is spooled like an outage (``shared.dlq.rejects``), never parked as refused,
# and a job that meets one is retried (``worker.failure``).
STATEMENT_STATE_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.InvalidSQLStatementNameError,  # 26000
    asyncpg.exceptions.DuplicatePreparedStatementError,  # 42P05
    asyncpg.exceptions.InvalidCachedStatementError,  # 0A000, asyncpg's "cached plan" subclass
)


async def behind_pooler(conn: Conn) -> bool:
    """True when a pooler stands between us and Postgres: the backend pid of the connect
    handshake (``BackendKeyData``) is not the pid of the backend that runs our query. PgBouncer
    (like pgcat, Odyssey, RDS Proxy) sends keys of its own. A simple-protocol query, so it
    prepares no statement, and the row count answers (the pid is an int we format ourselves)."""
    status: str = await conn.execute(f"SELECT 1 WHERE pg_backend_pid() = {int(conn.get_server_pid())}")
    return status != "SELECT 1"


class StatementCacheConnector:
    """The pool's ``connect`` callback: every connection gets ``statement_cache_size``, decided
    once. Unset (``DB_STATEMENT_CACHE_SIZE`` auto), the pool's first connection is opened with
    asyncpg's cache and asked ``behind_pooler``; behind a pooler it is swapped for one without a
    cache (a pooler's client slot, not a Postgres connection: nothing beyond the budget is ever
    opened against Postgres itself)."""

    def __init__(self, configured: int | None, application_name: str) -> None:
        self.size = configured
        self._application_name = application_name
        self._deciding = asyncio.Lock()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.size is None:
            async with self._deciding:
                if self.size is None:
                    return await self._decide(*args, **kwargs)
        return await asyncpg.connect(*args, statement_cache_size=self.size, **kwargs)

    async def _decide(self, *args: Any, **kwargs: Any) -> Any:
        conn = await asyncpg.connect(*args, statement_cache_size=ASYNCPG_STATEMENT_CACHE_SIZE, **kwargs)
        try:
            pooled = await behind_pooler(conn)
        except BaseException:
            conn.terminate()
            raise
        self.size = 0 if pooled else ASYNCPG_STATEMENT_CACHE_SIZE
        # INFO only when it matters (a pooler changes how we talk to Postgres); DEBUG otherwise.
        log_event(
            "INFO" if pooled else "DEBUG",
            "db_statement_cache",
            application_name=self._application_name,
            pooler_detected=pooled,
            statement_cache_size=self.size,
        )
        if not pooled:
            return conn
        await conn.close()
        return await asyncpg.connect(*args, statement_cache_size=0, **kwargs)


async def keep_session(conn: Conn) -> None:
    """The pool's ``reset``: nothing beyond what asyncpg always does on release (roll back an open
    transaction, drop listeners).

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``
    on every release: one more round trip per pooled query, which a failure storm paid once per
    capture (issue 17 §2). Our code leaves no session state behind on a pooled connection: no
    session ``SET`` (only ``SET LOCAL``), no ``LISTEN``, no ``WITH HOLD`` cursor, only
    transaction-scoped advisory locks — which PgBouncer in transaction mode requires anyway. Code
    that needs session state takes a connection of its own, not one from this pool.
    """


async def create_pool(
    settings: Settings, *, application_name: str, metrics: Metrics | None = None, dsn: str | None = None
) -> Any:
    """Open an asyncpg pool with our codecs, observer, application_name, command timeout, a
    statement cache fit for what is behind ``dsn``, and acquire timing when ``metrics`` is given."""
    observer = QueryObserver(metrics, settings.slow_query_ms)
    connector = StatementCacheConnector(settings.db_statement_cache_size, application_name)

    async def init(conn: Conn) -> None:
        conn.query_observer = observer
        await init_connection(conn)

    pool = TimedPool(
        dsn or settings.require_database_url(),
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        loop=None,
        connect=connector,
        connection_class=ObservedConnection,
        record_class=asyncpg.Record,
        command_timeout=settings.db_command_timeout_seconds,
        server_settings={"application_name": application_name},
        init=init,
        reset=keep_session,
        timeout=10,
    )
    pool.statement_cache = connector
    if metrics is not None:
        pool.wait_observer = lambda seconds: metrics.observe(metrics.db_pool_wait_seconds, seconds)
    return await pool


def record_pool_gauges(pool: Any, metrics: Metrics) -> None:
    """Export busy/idle/max connections of a pool as ``fmhl_db_pool_connections{state}``."""
    size = pool.get_size()
    idle = pool.get_idle_size()
    metrics.set(metrics.db_pool_connections, size - idle, {"state": "busy"})
    metrics.set(metrics.db_pool_connections, idle, {"state": "idle"})
    metrics.set(metrics.db_pool_connections, pool.get_max_size(), {"state": "max"})


class Database:
    """A pool opened in the background, retried with backoff until Postgres answers."""

    def __init__(self, settings: Settings, *, application_name: str, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._application_name = application_name
        self._metrics = metrics
        self._pool: Any = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._owns_pool = True

    @classmethod
    def from_pool(cls, settings: Settings, pool: Any) -> Database:
        """A Database around an already open pool (tests, or a process sharing one pool)."""
        db = cls(settings, application_name="shared-pool")
        db._pool = pool
        db.connected.set()
        db._owns_pool = False
        return db

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise DependencyUnavailable("postgres", "database connection not established yet")
        return self._pool

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._connect_forever(), name="db-connect")

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                self._pool = await asyncio.wait_for(
                    create_pool(
                        self._settings, application_name=self._application_name, metrics=self._metrics
                    ),
                    timeout=15,
                )
                self.connected.set()
                log_event("INFO", "db_connected", application_name=self._application_name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means "try again later"
                log_event("WARNING", "db_connect_failed", error_type=type(exc).__name__, retry_in_s=delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pool is not None and self._owns_pool:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=5)
            except (TimeoutError, OSError):
                self._pool.terminate()

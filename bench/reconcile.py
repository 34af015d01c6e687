"""Bench ``reconcile_balances`` on 100,000 providers and 2,000,000 ledger rows.

Where Postgres comes from: ``TEST_DATABASE_URL``, else ``DATABASE_URL`` (a scratch database
``fmhl_bench_<random>`` is created on that server, so its user needs CREATEDB, and dropped at the
end), else an embedded server (``cli.embedded.EmbeddedPostgres``) in a temporary directory,
destroyed at the end.

Data, loaded set-based (one ``INSERT ... SELECT generate_series`` per table): every provider has
20 ledger rows (a top-up, charges, refunds) and a balance equal to its ledger sum; then 1,000
providers get a small drift (corrected) and 50 a large one (alerted), then ``VACUUM ANALYZE``.

Baselines, measured in the same run against the same data:
- the original design: list the providers, then one ``sum(amount)`` query per provider, timed
  on a random 2,000-provider sample and extrapolated to all of them;
- the floor: a bare ``SELECT provider_id, sum(amount) ... GROUP BY`` over the whole ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from cli.embedded import EmbeddedPostgres
from shared.infra.config import Settings
from shared.infra.db import create_pool, execute, fetch, fetchval
from shared.infra.logs import configure_logging
from shared.infra.metrics import Metrics
from shared.infra.migrations import migrate
from shared.marketplace.reconciliation import SCAN_MISMATCHES, reconcile_balances

PROVIDERS = 100_000
LEDGER_ROWS = 2_000_000
SMALL_DRIFTS = 1_000
LARGE_DRIFTS = 50
NAIVE_SAMPLE = 2_000
AUTO_CORRECT_MAX = Decimal("1.00")

INSERT_PROVIDERS = """
INSERT INTO providers (name, email, balance, lead_price, last_assigned_at)
SELECT 'bench provider ' || g, 'bench-' || g || '@example.test', 0, (5 + g % 20)::numeric(12, 2),
       now() - g * interval '1 second'
FROM generate_series(1, $1::int) AS g
"""

# Row 1 is a top-up; every 7th a refund of one lead; the rest charges of one lead.
INSERT_LEDGER = """
INSERT INTO ledger_entries (provider_id, kind, amount)
SELECT p.id,
       CASE WHEN k = 1 THEN 'topup' WHEN k % 7 = 0 THEN 'refund' ELSE 'charge' END,
       CASE WHEN k = 1 THEN 1000.00 WHEN k % 7 = 0 THEN p.lead_price ELSE -p.lead_price END
FROM providers p CROSS JOIN generate_series(1, $1::int) AS k
"""

SYNC_BALANCES = """
UPDATE providers p SET balance = l.total
FROM (SELECT provider_id, sum(amount) AS total FROM ledger_entries GROUP BY provider_id) l
WHERE l.provider_id = p.id
"""

# Providers in uuid order are in random order: the first $1 drift a little, the next $2 a lot.
INJECT_DRIFTS = """
WITH picked AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM providers ORDER BY id LIMIT $1::int + $2::int
)
UPDATE providers p
SET balance = p.balance
    + CASE WHEN picked.n > $1::int THEN 25.00 WHEN picked.n % 2 = 0 THEN 0.37 ELSE -0.42 END
FROM picked
WHERE picked.id = p.id
"""

GROUP_BY_FLOOR = """
SELECT count(*) FROM (SELECT provider_id, sum(amount) FROM ledger_entries GROUP BY provider_id) AS sums
"""

NAIVE_LIST = "SELECT id, balance FROM providers"
NAIVE_SAMPLE_IDS = "SELECT id FROM providers ORDER BY random() LIMIT $1"
NAIVE_SUM_ONE = "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE provider_id = $1"


def run() -> None:
    asyncio.run(bench_reconcile())


async def bench_reconcile() -> None:
    # One ERROR line per alerted provider (and a slow_query warning for the scan) is expected
    # here and would drown the figures; the counts are printed below instead.
    configure_logging("CRITICAL")
    async with scratch_database() as (dsn, source):
        print(f"bench reconcile: {PROVIDERS:,} providers, {LEDGER_ROWS:,} ledger rows (postgres: {source})")
        await migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            load_s = await _timed(lambda: _load(conn))
            _line("load (set-based inserts, vacuum analyze)", load_s)
            floor_s = await _median(lambda: fetchval(conn, "bench_group_by_floor", GROUP_BY_FLOOR), 3)
            scan_s = await _median(lambda: fetch(conn, "reconcile_scan_mismatches", SCAN_MISMATCHES), 3)
            naive_s, sampled_s = await _naive_extrapolated(conn)
        finally:
            await conn.close()

        metrics = Metrics()
        settings = Settings(database_url=dsn, redis_url=None, db_command_timeout_seconds=300)
        pool = await create_pool(settings, application_name="fmhl-bench", metrics=metrics)
        try:
            first = await reconcile_balances(pool, metrics, auto_correct_max=AUTO_CORRECT_MAX)
            second = await reconcile_balances(pool, metrics, auto_correct_max=AUTO_CORRECT_MAX)
        finally:
            await pool.close()

    expected = (PROVIDERS, SMALL_DRIFTS + LARGE_DRIFTS, SMALL_DRIFTS, LARGE_DRIFTS)
    got = (first.checked, first.discrepancies, first.corrected, first.alerted)
    if got != expected:
        raise SystemExit(
            f"bench reconcile: expected (checked, found, corrected, alerted) {expected}, got {got}"
        )
    _line("baseline: GROUP BY sum over the whole ledger", floor_s, "the floor")
    _line(
        "baseline: naive loop, one query per provider",
        naive_s,
        f"{NAIVE_SAMPLE:,} sampled in {sampled_s:.3f} s, extrapolated to {PROVIDERS:,}",
    )
    _line("set-based scan (one query, mismatches only)", scan_s, f"{scan_s / floor_s:.2f}x the floor")
    _line(
        f"reconcile_balances: {first.corrected:,} corrected, {first.alerted} alerted",
        first.duration_seconds,
        f"{naive_s / first.duration_seconds:.1f}x faster than naive",
    )
    _line(
        f"reconcile_balances again: {second.alerted} alerted",
        second.duration_seconds,
        f"{naive_s / second.duration_seconds:.1f}x faster than naive",
    )


def _line(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<50} {seconds:9.3f} s   {note}".rstrip())


async def _load(conn: Any) -> None:
    await execute(conn, "bench_insert_providers", INSERT_PROVIDERS, PROVIDERS)
    await execute(conn, "bench_insert_ledger", INSERT_LEDGER, LEDGER_ROWS // PROVIDERS)
    await execute(conn, "bench_sync_balances", SYNC_BALANCES)
    await execute(conn, "bench_inject_drifts", INJECT_DRIFTS, SMALL_DRIFTS, LARGE_DRIFTS)
    await execute(conn, "bench_vacuum", "VACUUM ANALYZE providers, ledger_entries")


async def _naive_extrapolated(conn: Any) -> tuple[float, float]:
    """The original design's cost: list providers, then one ledger query each (sampled)."""
    list_s = await _timed(lambda: fetch(conn, "bench_naive_list", NAIVE_LIST))
    sample = [row["id"] for row in await fetch(conn, "bench_naive_sample", NAIVE_SAMPLE_IDS, NAIVE_SAMPLE)]

    async def loop() -> None:
        for provider_id in sample:
            await fetchval(conn, "bench_naive_sum_one", NAIVE_SUM_ONE, provider_id)

    sampled_s = await _timed(loop)
    return list_s + sampled_s * PROVIDERS / len(sample), sampled_s


async def _timed(action: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def _median(action: Callable[[], Awaitable[Any]], repeats: int) -> float:
    return statistics.median([await _timed(action) for _ in range(repeats)])


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[tuple[str, str]]:
    """A fresh database on the configured server (or an embedded one), dropped at the end."""
    server_dsn = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    source = "TEST_DATABASE_URL" if os.environ.get("TEST_DATABASE_URL") else "DATABASE_URL"
    with contextlib.ExitStack() as stack:
        if not server_dsn:
            root = Path(tempfile.mkdtemp(prefix="fmhl-bench-pg-"))
            stack.callback(shutil.rmtree, root, True)
            server = EmbeddedPostgres(root / "data").start()
            stack.callback(server.destroy)
            server_dsn, source = server.dsn, "embedded"
        name = f"fmhl_bench_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                parts = urlsplit(server_dsn)
                yield (
                    urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment)),
                    source,
                )
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

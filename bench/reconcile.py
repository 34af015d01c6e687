"""Reconciliation: ``reconcile_balances`` on ``reconcile_providers`` providers x 20 ledger rows
(100,000 providers and 2,000,000 ledger rows at 1m scale), in the bench's scratch database.

Data, loaded set-based (one ``INSERT ... SELECT generate_series`` per table): every provider has
20 ledger rows (a top-up, charges, refunds) and a balance equal to its ledger sum; then 1 % of the
providers get a small drift (corrected) and 0.05 % a large one (alerted), then ``VACUUM ANALYZE``.

Baselines, measured in the same run against the same data:
- the floor: a bare ``SELECT provider_id, sum(amount) ... GROUP BY`` over the whole ledger; the
  product's set-based mismatch scan is reported as a ratio of it (target: at most 2x the floor);
- the original design: list the providers, then one ``sum(amount)`` query per provider, timed
  on a random 2,000-provider sample and extrapolated to all of them.
Both ``reconcile_balances`` runs must find exactly the injected drifts (the second finds only the
large ones, which are alerted, never corrected), or the case fails.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg

from bench.common import Backends, Result, Scale, progress, quiet_stdout, timed
from shared.infra.config import Settings
from shared.infra.db import create_pool, execute, fetch, fetchval
from shared.infra.metrics import Metrics
from shared.marketplace.reconciliation import SCAN_MISMATCHES, reconcile_balances

LEDGER_PER_PROVIDER = 20
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


async def reconcile_case(backends: Backends, scale: Scale) -> list[Result]:
    providers = scale.reconcile_providers
    small, large = max(1, providers // 100), max(1, providers // 2_000)
    sample = min(NAIVE_SAMPLE, providers)
    progress(f"reconcile: {providers:,} providers, {providers * LEDGER_PER_PROVIDER:,} ledger rows")
    dsn = backends.database_url
    conn = await asyncpg.connect(dsn)
    try:
        load_s = await timed(lambda: _load(conn, providers, small, large))
        floor_s = await _median(lambda: fetchval(conn, "bench_group_by_floor", GROUP_BY_FLOOR), 3)
        scan_s = await _median(lambda: fetch(conn, "reconcile_scan_mismatches", SCAN_MISMATCHES), 3)
        naive_s, sampled_s = await _naive_extrapolated(conn, providers, sample)
    finally:
        await conn.close()

    metrics = Metrics()
    settings = Settings(database_url=dsn, redis_url=None, db_command_timeout_seconds=300)
    pool = await create_pool(settings, application_name="fmhl-bench", metrics=metrics)
    try:
        with quiet_stdout():
            first = await reconcile_balances(pool, metrics, auto_correct_max=AUTO_CORRECT_MAX)
            second = await reconcile_balances(pool, metrics, auto_correct_max=AUTO_CORRECT_MAX)
    finally:
        await pool.close()

    expected = (providers, small + large, small, large)
    got = (first.checked, first.discrepancies, first.corrected, first.alerted)
    wrong = (
        ""
        if got == expected and second.alerted == large and second.corrected == 0
        else (
            f"; WRONG: expected (checked, found, corrected, alerted) {expected}, got {got}, "
            f"then {second.corrected} corrected / {second.alerted} alerted"
        )
    )
    case = "reconciliation"
    return [
        Result(
            case,
            "set-based mismatch scan vs bare GROUP BY",
            scan_s * 1000,
            "ms",
            baseline=floor_s * 1000,
            ratio=scan_s / floor_s,
            target="<= 2",
            passed=False if wrong else None,
            note=f"ratio = scan / GROUP BY (lower is better); data loaded in {load_s:.1f} s" + wrong,
        ),
        Result(
            case,
            f"reconcile_balances: {first.corrected:,} corrected, {first.alerted} alerted",
            first.duration_seconds * 1000,
            "ms",
            baseline=naive_s * 1000,
            ratio=naive_s / first.duration_seconds,
            note=(
                f"baseline: naive loop of one query per provider, {sample:,} sampled in "
                f"{sampled_s:.2f} s, extrapolated; ratio = times faster; again: "
                f"{second.duration_seconds * 1000:.0f} ms, {second.alerted} alerted" + wrong
            ),
        ),
    ]


async def _load(conn: Any, providers: int, small: int, large: int) -> None:
    await execute(conn, "bench_insert_providers", INSERT_PROVIDERS, providers)
    await execute(conn, "bench_insert_ledger", INSERT_LEDGER, LEDGER_PER_PROVIDER)
    await execute(conn, "bench_sync_balances", SYNC_BALANCES)
    await execute(conn, "bench_inject_drifts", INJECT_DRIFTS, small, large)
    await execute(conn, "bench_vacuum", "VACUUM ANALYZE providers, ledger_entries")


async def _naive_extrapolated(conn: Any, providers: int, size: int) -> tuple[float, float]:
    """The original design's cost: list providers, then one ledger query each (sampled)."""
    list_s = await timed(lambda: fetch(conn, "bench_naive_list", NAIVE_LIST))
    sample = [row["id"] for row in await fetch(conn, "bench_naive_sample", NAIVE_SAMPLE_IDS, size)]

    async def loop() -> None:
        for provider_id in sample:
            await fetchval(conn, "bench_naive_sum_one", NAIVE_SUM_ONE, provider_id)

    sampled_s = await timed(loop)
    return list_s + sampled_s * providers / len(sample), sampled_s


async def _median(action: Callable[[], Awaitable[Any]], repeats: int) -> float:
    return statistics.median([await timed(action) for _ in range(repeats)])

"""``python -m bench.statement_cache``: what asyncpg's statement cache is worth, direct and behind
PgBouncer, to choose ``DB_STATEMENT_CACHE_SIZE`` (README, "PgBouncer").

A pool of 10 runs 4,000 units of an insert into ``audit_log`` and a select by primary key (the
shape of a capture and a lookup), concurrently, against an embedded Postgres of its own: direct
with asyncpg's cache (100), direct without (0), and through Debian's ``pgbouncer`` (transaction
mode) without (the only setting that works there). Rounds interleave the variants; the table
shows the median of each and its ratio to direct-with-cache. Timing is noisy on a shared
machine: compare the ratios, not the seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from cli.embedded import EmbeddedPostgres
from shared.infra.db import init_connection
from shared.infra.migrations import apply_migrations
from tests import pgbouncer

INSERT = "INSERT INTO audit_log (actor, action, target_id, metadata) VALUES ($1, $2, $3, $4)"
SELECT = "SELECT id, action, target_id, metadata, occurred_at FROM audit_log WHERE id = $1"
UNITS = 4000
POOL = 10
ROUNDS = 4


async def _run(dsn: str, cache: int) -> float:
    pool = await asyncpg.create_pool(
        dsn, min_size=POOL, max_size=POOL, statement_cache_size=cache, init=init_connection
    )

    async def one(i: int) -> None:
        async with pool.acquire() as conn:
            await conn.execute(INSERT, "bench", "statement_cache", str(i), {"i": i})
            await conn.fetchrow(SELECT, i + 1)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(UNITS)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return elapsed


async def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="fmhl-bench-cache-"))
    server = EmbeddedPostgres(root / "pg").start()
    bouncer = (
        pgbouncer.PgBouncer(server.dsn, default_pool_size=POOL).start() if pgbouncer.available() else None
    )
    try:
        admin = await asyncpg.connect(server.dsn)
        await admin.execute("CREATE DATABASE bench_cache")
        await admin.close()
        direct = server.dsn_for("bench_cache")
        conn = await asyncpg.connect(direct)
        await apply_migrations(conn)
        await conn.close()
        variants = {"direct, cache 100": (direct, 100), "direct, cache 0": (direct, 0)}
        if bouncer is not None:
            variants[f"pgbouncer {pgbouncer.version()}, cache 0"] = (bouncer.url_for(direct), 0)
        await _run(direct, 100)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, (dsn, cache) in variants.items():
                times[name].append(await _run(dsn, cache))
        base = statistics.median(times["direct, cache 100"])
        print(f"{UNITS} x (insert + select by id), pool {POOL}, median of {ROUNDS} rounds")
        for name, runs in times.items():
            median = statistics.median(runs)
            print(f"  {name:<28} {median:6.2f} s  {median / base:5.2f}x  runs {[round(r, 2) for r in runs]}")
    finally:
        if bouncer is not None:
            bouncer.stop()
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

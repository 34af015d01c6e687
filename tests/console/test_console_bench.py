"""``bench/console.py`` at toy size, so the console bench cannot rot between ``make bench`` runs."""

from __future__ import annotations

from typing import Any

from bench.console import TARGET_MS, console_bench


async def test_console_bench_renders_every_page_and_reports_p95(
    database_url: str, redis_url: str, clean_db: Any, redis: Any
) -> None:
    records = await console_bench(database_url, redis_url, 2_000, samples=10)
    for record in records:
        print(f"{record['metric']}: {record['value']} ms ({record['note']})")
    assert len(records) == 16
    assert {r["case"] for r in records} == {"console"} and {r["unit"] for r in records} == {"ms"}
    assert all(r["metric"].startswith("p95 ") and r["target"] == TARGET_MS for r in records)
    assert all(isinstance(r["pass"], bool) and r["value"] > 0 for r in records)
    assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") >= 2_000

"""Two scheduler processes on a 1-second schedule: every tick of every job runs exactly once."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.procs import Proc, base_env
from worker.cron import CRON_NAMES

# serial: two schedulers must run every 1 s tick for 7 s: a loaded machine misses ticks
pytestmark = pytest.mark.serial

RUN_SECONDS = 7


async def test_two_schedulers_run_each_tick_of_each_job_once(
    database_url: str, redis_url: str, redis: Any, clean_db: Any
) -> None:
    schedules = orjson.dumps({name: {"second": "*"} for name in CRON_NAMES}).decode()
    env = base_env(DATABASE_URL=database_url, REDIS_URL=redis_url, CRON_SCHEDULES=schedules)
    procs = [Proc(["worker", "scheduler"], env).start() for _ in range(2)]
    try:
        time.sleep(RUN_SECONDS)
    finally:
        codes = [p.stop() for p in procs]
    assert codes == [0, 0], [p.output()[-2000:] for p in procs]
    rows = await clean_db.fetch(
        "SELECT action, metadata->>'tick' AS tick FROM audit_log WHERE action LIKE 'cron.%' ORDER BY 1, 2"
    )
    runs = await clean_db.fetch("SELECT job, scheduled_for, status FROM cron_runs")
    assert all(r["status"] == "success" for r in runs)
    for name in CRON_NAMES:
        ticks = [datetime.fromisoformat(r["tick"]) for r in rows if r["action"] == f"cron.{name}"]
        counts = Counter(ticks)
        assert counts and max(counts.values()) == 1, f"{name} ran a tick twice: {counts.most_common(2)}"
        assert len(ticks) >= RUN_SECONDS - 4, f"{name} ran only {len(ticks)} ticks"
        ordered = sorted(ticks)
        gaps = [b - a for a, b in itertools.pairwise(ordered)]
        assert all(gap == timedelta(seconds=1) for gap in gaps), f"{name} missed a tick: {gaps}"
        assert len([r for r in runs if r["job"] == name]) == len(ticks)

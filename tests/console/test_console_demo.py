"""``fmhl-ops demo`` as a real process, then real burst workers: a living console's worth of data,
with failures in several distinct groups."""

from __future__ import annotations

import asyncio
import re
import subprocess
from typing import Any

from shared.infra.config import Settings
from shared.jobs.queues import JOB_QUEUES
from tests.procs import FMHL_OPS, base_env
from tests.worker_support import run_burst


async def test_demo_seeds_rows_and_jobs_that_fail_in_distinct_ways(
    settings: Settings, database_url: str, redis_url: str, clean_db: Any, redis: Any
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [FMHL_OPS, "demo", "--seed", "7"],
        env=base_env(DATABASE_URL=database_url, REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    print(result.stdout.strip())
    summary = re.search(r"enqueued (\d+) jobs, (\d+) of them built to fail", result.stdout)
    assert summary
    jobs, failing = int(summary.group(1)), int(summary.group(2))
    assert await clean_db.fetchval("SELECT count(*) FROM providers WHERE name LIKE 'demo-%'") == 12
    assert await clean_db.fetchval("SELECT count(*) FROM leads WHERE source = 'demo'") == 40
    queued = sum([await redis.zcard(queue) for queue in JOB_QUEUES])
    assert queued == jobs
    for queue in JOB_QUEUES:
        await run_burst(queue, settings, clean_db, redis)
    await run_burst(JOB_QUEUES[1], settings, clean_db, redis)  # the e-mails distribution enqueued
    groups = await clean_db.fetch(
        "SELECT function, error_type, unresolved_count FROM dlq_groups ORDER BY unresolved_count DESC"
    )
    print("failure groups:", [(g["function"], g["error_type"], g["unresolved_count"]) for g in groups])
    assert len(groups) >= 6
    assert sum(g["unresolved_count"] for g in groups) == failing
    assert await clean_db.fetchval("SELECT count(*) FROM lead_assignments") > 0
    assert await clean_db.fetchval("SELECT count(*) FROM email_outbox WHERE status = 'sent'") > 0

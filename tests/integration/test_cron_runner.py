"""The cron runner: once per tick, audit + metrics per run, failures through the DLQ."""

from __future__ import annotations

import subprocess
from decimal import Decimal
from typing import Any

import orjson

from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.metrics import Metrics
from shared.jobs.policy import RetryPolicy
from shared.jobs.queues import SCHEDULER
from tests.factories import create_provider
from tests.procs import FMHL_OPS, base_env
from tests.worker_support import run_burst
from worker.cron import CronDefinition, cron_runner, definition
from worker.failure import with_failure_policy


async def test_a_tick_runs_once_and_is_audited_with_metrics(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    await create_provider(
        clean_db, status="inactive", inactive_reason="insufficient_balance", balance=Decimal("50")
    )
    metrics = Metrics()
    ctx = {
        "db": Database.from_pool(settings, clean_db),
        "redis": redis,
        "metrics": metrics,
        "settings": settings,
    }
    run = cron_runner(definition("reactivate_subscriptions"))
    first = await run(ctx | {"job_id": "reactivate_subscriptions:1700000000000"})
    second = await run(ctx | {"job_id": "reactivate_subscriptions:1700000000000"})
    assert first["reactivated"] == 1 and "duration_seconds" in first
    assert second == {"skipped": True}
    rows = await clean_db.fetch("SELECT * FROM audit_log WHERE action = 'cron.reactivate_subscriptions'")
    assert len(rows) == 1 and rows[0]["metadata"]["reactivated"] == 1
    assert metrics.cron_runs_total.get({"cron_job": "reactivate_subscriptions", "status": "success"}) == 1
    assert metrics.cron_last_success_timestamp_seconds.get({"cron_job": "reactivate_subscriptions"}) > 1.7e9
    status = await clean_db.fetchval("SELECT status FROM cron_runs WHERE job = 'reactivate_subscriptions'")
    assert status == "success"


async def test_a_failing_cron_job_goes_through_the_failure_policy_into_the_dlq(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    async def broken(ctx: dict[str, Any]) -> Any:
        raise ValueError("ledger table 42 unreadable")

    definition_ = CronDefinition("broken_job", broken, {"second": 0}, RetryPolicy(max_tries=1))
    function = with_failure_policy(SCHEDULER, "broken_job", definition_.policy, cron_runner(definition_))
    await redis.enqueue_job("broken_job", _job_id="broken_job:1700000000000", _queue_name=SCHEDULER)
    metrics = Metrics()
    await run_burst(SCHEDULER, settings, clean_db, redis, [function], metrics=metrics, cron_jobs=[])
    row = await clean_db.fetchrow("SELECT * FROM dead_letter_queue")
    assert row["queue_name"] == SCHEDULER and row["function"] == "broken_job" and row["reason"] == "permanent"
    assert await clean_db.fetchval("SELECT status FROM cron_runs WHERE job = 'broken_job'") == "failed"
    assert metrics.cron_runs_total.get({"cron_job": "broken_job", "status": "failure"}) == 1


async def test_cron_run_cli_runs_the_job_now(database_url: str, redis_url: str, clean_db: Any) -> None:
    await create_provider(clean_db, balance=Decimal("10.00"), with_opening_ledger=False)  # d = 10.00 → alert
    env = base_env(DATABASE_URL=database_url, REDIS_URL=redis_url, RECONCILE_AUTO_CORRECT_MAX="1.00")
    result = subprocess.run(
        [FMHL_OPS, "cron", "run", "reconcile_balances"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert summary["job"] == "reconcile_balances" and summary["alerted"] == 1 and summary["corrected"] == 0
    assert (
        await clean_db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'cron.reconcile_balances'")
        == 1
    )
    bad = subprocess.run(
        [FMHL_OPS, "cron", "run", "nope"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr

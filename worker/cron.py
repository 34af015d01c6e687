"""The scheduler's cron jobs (UTC), each run once per tick across any number of schedulers.

| job | default schedule | does |
| --- | --- | --- |
| drain_dlq_spool | every minute | spooled DLQ records → Postgres |
| reactivate_subscriptions | every 5 min | providers whose balance covers their price again → active |
| reconcile_balances | daily 03:00 | cached balance vs ledger sum; small diffs corrected, large alerted |
| cleanup_dlq | Sundays 00:00 | resolved DLQ entries older than DLQ_RETENTION_DAYS deleted in batches |

Once per tick: arq's unique cron job id (``name:tick_ms``) stops a second scheduler enqueueing
the same tick while the job exists, and a ``cron_runs`` row keyed (job, tick) stops it after
the job finished (arq keeps no result for cron jobs). A tick whose run failed may be retried;
one that succeeded or is running is never run again.

Every run logs ``cron_started``/``cron_finished`` with its duration, writes one audit row with
its counts, counts ``fmhl_cron_runs_total{cron_job,status}`` and, on success, sets
``fmhl_cron_last_success_timestamp_seconds{cron_job}``. (The label is ``cron_job``, not the
contract's ``job``: ``job`` is Prometheus's own target label, which a scrape would rename to
``exported_job``, and aioprometheus refuses it outright.) Failures go through the same failure
decorator and DLQ as every job. Schedules can be overridden with ``CRON_SCHEDULES``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from arq.cron import CronJob, cron

from shared import audit
from shared.dlq.cleanup import cleanup_dlq
from shared.dlq.spool import drain_spool
from shared.infra.config import Settings
from shared.infra.db import execute, fetchval
from shared.infra.jsonable import dataclass_to_dict
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.jobs.policy import RetryPolicy
from shared.jobs.queues import SCHEDULER
from shared.marketplace.reactivation import reactivate_subscriptions
from shared.marketplace.reconciliation import reconcile_balances
from worker.failure import with_failure_policy

CronBody = Callable[[dict[str, Any]], Awaitable[Any]]


async def _drain(ctx: dict[str, Any]) -> Any:
    return await drain_spool(ctx["db"].pool, ctx["redis"], ctx["metrics"])


async def _reactivate(ctx: dict[str, Any]) -> Any:
    return await reactivate_subscriptions(ctx["db"].pool, ctx["metrics"])


async def _reconcile(ctx: dict[str, Any]) -> Any:
    settings: Settings = ctx["settings"]
    return await reconcile_balances(
        ctx["db"].pool, ctx["metrics"], auto_correct_max=settings.reconcile_auto_correct_max
    )


async def _cleanup(ctx: dict[str, Any]) -> Any:
    settings: Settings = ctx["settings"]
    return await cleanup_dlq(ctx["db"].pool, retention_days=settings.dlq_retention_days)


@dataclasses.dataclass(frozen=True, slots=True)
class CronDefinition:
    name: str
    body: CronBody
    schedule: Mapping[str, Any]
    policy: RetryPolicy


CRON_DEFINITIONS: tuple[CronDefinition, ...] = (
    CronDefinition("drain_dlq_spool", _drain, {"second": 0}, RetryPolicy(max_tries=1, timeout_seconds=50)),
    CronDefinition(
        "reactivate_subscriptions",
        _reactivate,
        {"minute": set(range(0, 60, 5)), "second": 0},
        RetryPolicy(max_tries=2, timeout_seconds=120, backoff_base_seconds=5),
    ),
    CronDefinition(
        "reconcile_balances",
        _reconcile,
        {"hour": 3, "minute": 0, "second": 0},
        RetryPolicy(max_tries=3, timeout_seconds=600, backoff_base_seconds=30),
    ),
    CronDefinition(
        "cleanup_dlq",
        _cleanup,
        {"weekday": "sun", "hour": 0, "minute": 0, "second": 0},
        RetryPolicy(max_tries=3, timeout_seconds=600, backoff_base_seconds=30),
    ),
)
CRON_NAMES = tuple(d.name for d in CRON_DEFINITIONS)

CLAIM_TICK = """
INSERT INTO cron_runs (job, scheduled_for) VALUES ($1, $2)
ON CONFLICT (job, scheduled_for) DO UPDATE
    SET status = 'running', started_at = now(), finished_at = NULL
    WHERE cron_runs.status = 'failed'
RETURNING 1
"""
FINISH_TICK = """
UPDATE cron_runs SET status = $3, finished_at = now(), counts = $4
WHERE job = $1 AND scheduled_for = $2
"""


def tick_of(ctx: Mapping[str, Any]) -> datetime:
    """The tick a cron job runs for: from arq's ``name:tick_ms`` job id, else now (manual run)."""
    job_id = str(ctx.get("job_id") or "")
    _, _, tail = job_id.rpartition(":")
    if tail.isdigit():
        return datetime.fromtimestamp(int(tail) / 1000, tz=UTC)
    return datetime.now(UTC)


def _counts(result: Any) -> dict[str, Any]:
    data = dataclass_to_dict(result)
    return {
        k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in data.items()
    }


def cron_runner(definition: CronDefinition) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """The function arq runs for one tick (wrapped by the failure policy in ``scheduler_cron_jobs``)."""
    name = definition.name

    async def run(ctx: dict[str, Any]) -> dict[str, Any]:
        pool = ctx["db"].pool
        metrics: Metrics = ctx["metrics"]
        tick = tick_of(ctx)
        claimed = await fetchval(pool, "cron_claim_tick", CLAIM_TICK, name, tick)
        if not claimed:
            log_event("INFO", "cron_tick_already_ran", job=name, tick=tick.isoformat())
            return {"skipped": True}
        started = time.perf_counter()
        log_event("INFO", "cron_started", job=name, tick=tick.isoformat())
        try:
            result = await definition.body(ctx)
        except Exception as exc:
            duration = time.perf_counter() - started
            metrics.inc(metrics.cron_runs_total, {"cron_job": name, "status": "failure"})
            log_event(
                "ERROR", "cron_failed", job=name, duration_s=round(duration, 3), error_type=type(exc).__name__
            )
            try:
                await execute(
                    pool, "cron_finish_tick", FINISH_TICK, name, tick, "failed", {"error": type(exc).__name__}
                )
            except Exception as record_error:
                log_event(
                    "WARNING", "cron_run_record_failed", job=name, error_type=type(record_error).__name__
                )
            raise
        duration = time.perf_counter() - started
        counts = _counts(result) | {"duration_seconds": round(duration, 3)}
        async with pool.acquire() as conn, conn.transaction():
            await execute(conn, "cron_finish_tick", FINISH_TICK, name, tick, "success", counts)
            await audit.record(
                conn,
                actor="system:cron",
                action=f"cron.{name}",
                target_type="cron_job",
                target_id=name,
                metadata=counts | {"tick": tick.isoformat()},
            )
        metrics.inc(metrics.cron_runs_total, {"cron_job": name, "status": "success"})
        metrics.set(metrics.cron_last_success_timestamp_seconds, time.time(), {"cron_job": name})
        log_event("INFO", "cron_finished", job=name, duration_s=round(duration, 3), **counts)
        return counts

    run.__name__ = name
    return run


def _schedule(definition: CronDefinition, settings: Settings) -> dict[str, Any]:
    override = settings.cron_schedules.get(definition.name)
    if override is None:
        return dict(definition.schedule)
    schedule: dict[str, Any] = {"second": 0}
    for field_name, value in override.items():
        schedule[field_name] = None if value == "*" else (set(value) if isinstance(value, list) else value)
    return schedule


def scheduler_cron_jobs(settings: Settings) -> list[CronJob]:
    jobs = []
    for definition in CRON_DEFINITIONS:
        function = with_failure_policy(SCHEDULER, definition.name, definition.policy, cron_runner(definition))
        jobs.append(
            cron(
                function.coroutine,
                name=definition.name,
                unique=True,
                max_tries=definition.policy.max_tries,
                timeout=definition.policy.arq_timeout_seconds,
                **_schedule(definition, settings),
            )
        )
    return jobs


def definition(name: str) -> CronDefinition:
    for candidate in CRON_DEFINITIONS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)

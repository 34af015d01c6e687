"""Cron runs as recorded by the scheduler (``cron_runs``), and asking the scheduler for a run now.

``worker.cron`` writes one row per (job, tick); this module only reads them, plus the latest
run per job for the console. A manual run is an ordinary job on the ``scheduler`` queue named
after the cron job, with job id ``manual:<job>:<epoch ms>``: the scheduler worker registers cron
jobs as functions, and its runner takes the tick from the job id's trailing milliseconds, so a
manual run claims its own ``cron_runs`` row and is audited like a scheduled one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from arq.connections import ArqRedis

from shared.infra.db import Conn, fetch
from shared.infra.errors import Invalid
from shared.infra.metrics import Metrics
from shared.jobs.enqueue import enqueue_call
from shared.jobs.queues import SCHEDULER

# The scheduler's cron jobs (``worker.cron.CRON_DEFINITIONS``; a unit test keeps both in step).
CRON_JOB_NAMES: Final = ("drain_dlq_spool", "reactivate_subscriptions", "reconcile_balances", "cleanup_dlq")


@dataclass(frozen=True, slots=True)
class CronRun:
    job: str
    scheduled_for: datetime
    started_at: datetime
    finished_at: datetime | None
    status: str
    counts: dict[str, Any]

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


# Per job, its newest ``$2`` runs: one index range scan on the (job, scheduled_for) primary key each.
LATEST_RUNS = """
SELECT r.job, r.scheduled_for, r.started_at, r.finished_at, r.status, r.counts
FROM unnest($1::text[]) AS j(job)
CROSS JOIN LATERAL (
    SELECT * FROM cron_runs c WHERE c.job = j.job ORDER BY c.scheduled_for DESC LIMIT $2
) AS r
ORDER BY r.job, r.scheduled_for DESC
"""


async def latest_runs(conn: Conn, *, per_job: int = 5) -> dict[str, list[CronRun]]:
    """Every known cron job (even one that never ran) with its newest runs, newest first."""
    rows = await fetch(conn, "cron_latest_runs", LATEST_RUNS, list(CRON_JOB_NAMES), per_job)
    runs: dict[str, list[CronRun]] = {name: [] for name in CRON_JOB_NAMES}
    for row in rows:
        runs[row["job"]].append(CronRun(**dict(row)))
    return runs


def manual_run_job_id(name: str, at: float | None = None) -> str:
    return f"manual:{name}:{int((at if at is not None else time.time()) * 1000)}"


async def enqueue_cron_run(
    redis: ArqRedis, name: str, *, job_id: str | None = None, metrics: Metrics | None = None
) -> str:
    """Put one run of cron job ``name`` on the scheduler queue now; returns its job id."""
    if name not in CRON_JOB_NAMES:
        raise Invalid(f"cron job must be one of {', '.join(CRON_JOB_NAMES)}")
    job_id = job_id or manual_run_job_id(name)
    enqueued = await enqueue_call(
        redis, name, args=(), kwargs={}, metrics=metrics, job_id=job_id, queue=SCHEDULER
    )
    return enqueued or job_id

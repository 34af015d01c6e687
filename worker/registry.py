"""Which Python function runs each job of the catalogue, and which cron jobs the scheduler runs.

The catalogue (``shared.jobs.catalogue``) owns names, queues and default retry policies; this
module only attaches functions to its entries. ``JOB_FUNCTIONS`` and the catalogue must name
the same jobs (a unit test checks both directions); ``JOB_POLICIES`` overrides a policy.
"""

from __future__ import annotations

from typing import Final

from arq.cron import CronJob
from arq.worker import Function

from shared.infra.config import Settings
from shared.jobs.catalogue import jobs_on
from shared.jobs.queues import ALL_QUEUES, SCHEDULER
from worker import jobs
from worker.failure import JobFunction, with_failure_policy

JOB_FUNCTIONS: Final[dict[str, JobFunction]] = {
    "distribute_lead": jobs.distribute_lead,
    "refund_bad_lead": jobs.refund_bad_lead,
    "send_email": jobs.send_email,
    "export_report": jobs.export_report,
}


def functions_for(queue: str, settings: Settings) -> list[Function]:
    if queue not in ALL_QUEUES:
        raise ValueError(f"unknown queue {queue!r}; expected one of {', '.join(ALL_QUEUES)}")
    return [
        with_failure_policy(
            queue,
            spec.name,
            spec.policy.with_overrides(settings.job_policies.get(spec.name, {})),
            JOB_FUNCTIONS[spec.name],
        )
        for spec in jobs_on(queue)
    ]


def cron_jobs_for(queue: str, settings: Settings) -> list[CronJob]:
    if queue != SCHEDULER:
        return []
    from worker.cron import scheduler_cron_jobs

    return scheduler_cron_jobs(settings)

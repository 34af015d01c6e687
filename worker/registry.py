"""Which functions and cron jobs each queue's worker runs, with their retry policies.

| function | queue | max tries | timeout | why |
| --- | --- | --- | --- | --- |
| distribute_lead | distribute_lead | 5 | 30 s | billing is idempotent; retry DB blips |
| refund_bad_lead | distribute_lead | 5 | 30 s | idempotent |
| send_email | email_send | 6 | 30 s | SMTP outages are common and short; longer backoff |
| export_report | report_export | 3 | 300 s | heavy query; few retries |
| cron jobs | scheduler | 1-3 | see worker.cron | a missed tick is covered by the next one |
"""

from __future__ import annotations

from arq.cron import CronJob
from arq.worker import Function

from shared.config import Settings
from shared.queues import DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT, SCHEDULER
from worker import jobs
from worker.failure import JobFunction, with_failure_policy
from worker.policy import RetryPolicy

JOB_DEFINITIONS: dict[str, list[tuple[str, JobFunction, RetryPolicy]]] = {
    DISTRIBUTE_LEAD: [
        ("distribute_lead", jobs.distribute_lead, RetryPolicy(max_tries=5, timeout_seconds=30)),
        ("refund_bad_lead", jobs.refund_bad_lead, RetryPolicy(max_tries=5, timeout_seconds=30)),
    ],
    EMAIL_SEND: [
        ("send_email", jobs.send_email, RetryPolicy(max_tries=6, timeout_seconds=30, backoff_base_seconds=5)),
    ],
    REPORT_EXPORT: [
        ("export_report", jobs.export_report, RetryPolicy(max_tries=3, timeout_seconds=300)),
    ],
    SCHEDULER: [],
}


def functions_for(queue: str, settings: Settings) -> list[Function]:
    if queue not in JOB_DEFINITIONS:
        raise ValueError(f"unknown queue {queue!r}; expected one of {', '.join(JOB_DEFINITIONS)}")
    return [
        with_failure_policy(queue, name, policy.with_overrides(settings.job_policies.get(name, {})), fn)
        for name, fn, policy in JOB_DEFINITIONS[queue]
    ]


def cron_jobs_for(queue: str, settings: Settings) -> list[CronJob]:
    if queue != SCHEDULER:
        return []
    from worker.cron import scheduler_cron_jobs

    return scheduler_cron_jobs(settings)

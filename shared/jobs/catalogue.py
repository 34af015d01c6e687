"""The job catalogue: every job function by name, with its queue and default retry policy.

One decision, one place. Enqueuers resolve a function's queue here; ``worker.registry`` only
attaches the Python function to each entry (a test checks that every entry has a function and
every function an entry); operators override policies with ``JOB_POLICIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.jobs.policy import RetryPolicy
from shared.jobs.queues import DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    queue: str
    policy: RetryPolicy
    why: str


JOB_CATALOGUE: Final[tuple[JobSpec, ...]] = (
    JobSpec(
        "distribute_lead",
        DISTRIBUTE_LEAD,
        RetryPolicy(max_tries=5, timeout_seconds=30),
        "billing is idempotent; retry database blips",
    ),
    JobSpec(
        "refund_bad_lead",
        DISTRIBUTE_LEAD,
        RetryPolicy(max_tries=5, timeout_seconds=30),
        "idempotent",
    ),
    JobSpec(
        "send_email",
        EMAIL_SEND,
        RetryPolicy(max_tries=6, timeout_seconds=30, backoff_base_seconds=5),
        "SMTP outages are common and short; longer backoff",
    ),
    JobSpec(
        "export_report",
        REPORT_EXPORT,
        RetryPolicy(max_tries=3, timeout_seconds=300),
        "heavy query; few retries",
    ),
)

JOBS_BY_NAME: Final[dict[str, JobSpec]] = {spec.name: spec for spec in JOB_CATALOGUE}


def queue_of(function: str) -> str | None:
    """The queue ``function`` runs on, or ``None`` for a name the catalogue does not know."""
    spec = JOBS_BY_NAME.get(function)
    return spec.queue if spec is not None else None


def jobs_on(queue: str) -> tuple[JobSpec, ...]:
    return tuple(spec for spec in JOB_CATALOGUE if spec.queue == queue)

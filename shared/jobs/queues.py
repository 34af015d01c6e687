"""Queue names and the reserved job kwargs every enqueuer and worker agree on.

The ``Literal`` types are the one definition of the names: the tuples derive from them, the HTTP
contract's enums (``service/contract.py``) derive from them, and mypy checks that each constant
below is one of them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

from shared.infra.ids import parse_uuid

JobQueueName = Literal["distribute_lead", "email_send", "report_export"]
QueueName = Literal[JobQueueName, "scheduler"]

JOB_QUEUES: Final[tuple[JobQueueName, ...]] = get_args(JobQueueName)
ALL_QUEUES: Final[tuple[QueueName, ...]] = get_args(QueueName)

DISTRIBUTE_LEAD: Final[JobQueueName] = "distribute_lead"
EMAIL_SEND: Final[JobQueueName] = "email_send"
REPORT_EXPORT: Final[JobQueueName] = "report_export"
SCHEDULER: Final[QueueName] = "scheduler"

# Reserved job kwarg carrying the correlation id into the worker; the failure decorator pops it
# before calling the job function and binds it to the job's log lines and DLQ row.
CORRELATION_KWARG: Final = "_correlation_id"
# Reserved job kwarg set by a DLQ retry: the new job's own DLQ entry (if it fails again) points
# back to the entry it was retried from.
RETRY_OF_KWARG: Final = "_dlq_retry_of"
# Reserved job kwarg carrying the enqueuer's W3C traceparent when tracing is on
# (shared.infra.tracing): the job's run joins that trace on its first try (a DLQ retry too: the
# retry's request is the parent) and links to it on a retry (try > 1).
TRACEPARENT_KWARG: Final = "_traceparent"
# Reserved job kwarg set by a DLQ retry when the entry kept its trace: the original failure's
# capturing span as a W3C traceparent; the run links to it (fmhl.link=redrive), never parents.
TRACELINK_KWARG: Final = "_tracelink"
RESERVED_KWARGS: Final = (CORRELATION_KWARG, RETRY_OF_KWARG, TRACEPARENT_KWARG, TRACELINK_KWARG)


def split_reserved_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], str | None, uuid.UUID | None]:
    """(business kwargs, correlation id, retry_of) from a job's kwargs. Every reserved kwarg is
    left out of the business ones: the trace context travels again with a redrive's own."""
    clean = {key: value for key, value in kwargs.items() if key not in RESERVED_KWARGS}
    correlation_id = kwargs.get(CORRELATION_KWARG)
    retry_of_raw = kwargs.get(RETRY_OF_KWARG)
    retry_of = parse_uuid(retry_of_raw) if isinstance(retry_of_raw, str) else None
    return clean, (str(correlation_id) if correlation_id else None), retry_of

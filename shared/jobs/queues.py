"""Queue names and the reserved job kwargs every enqueuer and worker agree on."""

from __future__ import annotations

from typing import Final

DISTRIBUTE_LEAD: Final = "distribute_lead"
EMAIL_SEND: Final = "email_send"
REPORT_EXPORT: Final = "report_export"
SCHEDULER: Final = "scheduler"

JOB_QUEUES: Final = (DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT)
ALL_QUEUES: Final = (*JOB_QUEUES, SCHEDULER)

# Reserved job kwarg carrying the correlation id into the worker; the failure decorator pops it
# before calling the job function and binds it to the job's log lines and DLQ row.
CORRELATION_KWARG: Final = "_correlation_id"
# Reserved job kwarg set by a DLQ retry: the new job's own DLQ entry (if it fails again) points
# back to the entry it was retried from.
RETRY_OF_KWARG: Final = "_dlq_retry_of"

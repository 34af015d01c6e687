"""Queue names and the job serializer shared by every enqueuer and worker.

Jobs travel through Redis as orjson, never pickle: a job's arguments must be JSON (ids,
strings, numbers, lists, dicts). A non-JSON argument fails at enqueue time, not in the worker.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

DISTRIBUTE_LEAD: Final = "distribute_lead"
EMAIL_SEND: Final = "email_send"
REPORT_EXPORT: Final = "report_export"
SCHEDULER: Final = "scheduler"

JOB_QUEUES: Final = (DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT)
ALL_QUEUES: Final = (*JOB_QUEUES, SCHEDULER)


def serialize_job(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def deserialize_job(payload: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(payload)
    return data

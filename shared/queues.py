"""Queue names and the job serializer shared by every enqueuer and worker.

Jobs travel through Redis as orjson, never pickle: a job's arguments must be JSON (ids,
strings, numbers, lists, dicts). A non-JSON argument fails at enqueue time, not in the worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from arq.connections import ArqRedis

from shared.correlation import current_correlation_id
from shared.metrics import Metrics

DISTRIBUTE_LEAD: Final = "distribute_lead"
EMAIL_SEND: Final = "email_send"
REPORT_EXPORT: Final = "report_export"
SCHEDULER: Final = "scheduler"

JOB_QUEUES: Final = (DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT)
ALL_QUEUES: Final = (*JOB_QUEUES, SCHEDULER)


def _json_default(value: Any) -> Any:
    """Only for arq's *result* records: a failed job's result is its exception."""
    if isinstance(value, BaseException):
        return {"error_type": type(value).__name__, "error_message": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serialize_job(data: dict[str, Any]) -> bytes:
    """Serialize an arq job or result record as JSON (exceptions become type + message)."""
    return orjson.dumps(data, default=_json_default)


def deserialize_job(payload: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(payload)
    return data


# Which queue each job function runs on. Every enqueuer resolves the queue here.
FUNCTION_QUEUES: Final[dict[str, str]] = {
    "distribute_lead": DISTRIBUTE_LEAD,
    "refund_bad_lead": DISTRIBUTE_LEAD,
    "send_email": EMAIL_SEND,
    "export_report": REPORT_EXPORT,
}

# Reserved job kwarg carrying the correlation id into the worker; the failure decorator pops it
# before calling the job function and binds it to the job's log lines and DLQ row.
CORRELATION_KWARG: Final = "_correlation_id"
# Reserved job kwarg set by a DLQ retry: the new job's own DLQ entry (if it fails again) points
# back to the entry it was retried from.
RETRY_OF_KWARG: Final = "_dlq_retry_of"


class UnknownJobFunction(ValueError):
    pass


async def enqueue(
    redis: ArqRedis,
    function: str,
    *,
    metrics: Metrics | None = None,
    job_id: str | None = None,
    queue: str | None = None,
    correlation_id: str | None = None,
    defer_by_seconds: float | None = None,
    **kwargs: Any,
) -> str | None:
    """Enqueue ``function(**kwargs)`` on its queue; the one helper every caller uses.

    Stamps the current correlation id (or ``correlation_id``) into the job, counts
    ``fmhl_queue_jobs_enqueued_total{queue}`` and returns the arq job id, or ``None`` when a job
    with ``job_id`` already exists (arq's de-duplication: nothing new was enqueued).
    Arguments must be JSON: this raises ``TypeError`` at enqueue time otherwise.
    """
    return await enqueue_call(
        redis,
        function,
        args=(),
        kwargs=kwargs,
        metrics=metrics,
        job_id=job_id,
        queue=queue,
        correlation_id=correlation_id,
        defer_by_seconds=defer_by_seconds,
    )


async def enqueue_call(
    redis: ArqRedis,
    function: str,
    *,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    metrics: Metrics | None = None,
    job_id: str | None = None,
    queue: str | None = None,
    correlation_id: str | None = None,
    defer_by_seconds: float | None = None,
) -> str | None:
    """``enqueue`` with explicit positional and keyword arguments (used to replay DLQ entries)."""
    target_queue = queue or FUNCTION_QUEUES.get(function)
    if target_queue is None:
        raise UnknownJobFunction(f"no queue is known for job function {function!r}")
    job_kwargs = dict(kwargs)
    orjson.dumps([list(args), job_kwargs])  # fail here, in the caller, if an argument is not JSON
    cid = correlation_id or current_correlation_id()
    if cid:
        job_kwargs[CORRELATION_KWARG] = cid
    job = await redis.enqueue_job(
        function,
        *args,
        _job_id=job_id,
        _queue_name=target_queue,
        _defer_by=defer_by_seconds,
        **job_kwargs,
    )
    if job is None:
        return None
    if metrics is not None:
        metrics.inc(metrics.queue_jobs_enqueued_total, {"queue": target_queue})
    return str(job.job_id)

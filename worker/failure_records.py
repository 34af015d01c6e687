"""Turning a failed job into a ``FailureRecord`` and handing it to ``shared.dlq.capture.capture``.

Two paths: ``record_from_exception`` (the failure decorator saw the exception) and
``record_from_silent_failure`` (arq's ``finish_failed_job``: expired, unknown function, max tries
passed while queued — no exception object, only arq's result record).
"""

from __future__ import annotations

import traceback
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.dlq.capture import FailureRecord
from shared.dlq.fingerprint import fingerprint, top_app_frame
from shared.infra.ids import parse_uuid
from shared.jobs.queues import CORRELATION_KWARG, RETRY_OF_KWARG


def split_reserved_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], str | None, uuid.UUID | None]:
    """(business kwargs, correlation id, retry_of) from a job's kwargs."""
    clean = dict(kwargs)
    correlation_id = clean.pop(CORRELATION_KWARG, None)
    retry_of_raw = clean.pop(RETRY_OF_KWARG, None)
    retry_of = parse_uuid(retry_of_raw) if retry_of_raw else None
    return clean, (str(correlation_id) if correlation_id else None), retry_of


def record_from_exception(
    *,
    queue: str,
    job_id: str,
    function: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: BaseException,
    attempts: int,
    reason: str,
    enqueued_at: datetime | None,
    correlation_id: str | None,
    retry_of: uuid.UUID | None,
) -> FailureRecord:
    error_type = type(exc).__name__
    message = str(exc) or repr(exc)
    return FailureRecord(
        queue=queue,
        job_id=job_id,
        function=function,
        args=list(args),
        kwargs=kwargs,
        error_type=error_type,
        error_message=message[:10_000],
        stack_trace="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-50_000:],
        fingerprint=fingerprint(error_type, message, top_app_frame(exc.__traceback__)),
        attempts=attempts,
        reason=reason,
        failed_at=datetime.now(UTC),
        enqueued_at=enqueued_at,
        correlation_id=correlation_id,
        retry_of=retry_of,
    )


SILENT_ERROR_TYPES = {
    "expired": ("JobExpired", "job definition expired in Redis before a worker ran it"),
    "function_not_found": ("FunctionNotFound", "no worker function named {function!r} on queue {queue!r}"),
    "max_tries_exceeded": ("MaxTriesExceeded", "try {attempts} exceeds max_tries {max_tries}"),
    "worker_lost": (
        "WorkerLost",
        "the worker running try {last_try} of {max_tries} stopped without finishing it (killed or crashed)",
    ),
    "permanent": ("JobNotRunnable", "arq could not run the job: {detail}"),
}


def record_from_silent_failure(
    *,
    queue: str,
    job_id: str,
    result: dict[str, Any],
    reason: str,
    max_tries: int | None,
) -> FailureRecord:
    """Build the record from arq's result dict (``f``, ``a``, ``k``, ``t``, ``et``, ``r``)."""
    function = str(result.get("f") or "<unknown>")
    args = list(result.get("a") or [])
    kwargs, correlation_id, retry_of = split_reserved_kwargs(dict(result.get("k") or {}))
    attempts = int(result.get("t") or 0)
    detail = result.get("r")
    detail_text = detail.get("error_message", "") if isinstance(detail, dict) else str(detail or "")
    error_type, template = SILENT_ERROR_TYPES[reason]
    if reason == "permanent" and isinstance(detail, dict) and detail.get("error_type"):
        error_type = str(detail["error_type"])
    message = template.format(
        function=function,
        queue=queue,
        attempts=attempts,
        max_tries=max_tries,
        last_try=max(attempts - 1, 0),
        detail=detail_text,
    )
    enqueue_ms = result.get("et")
    return FailureRecord(
        queue=queue,
        job_id=job_id,
        function=function,
        args=args,
        kwargs=kwargs,
        error_type=error_type,
        error_message=message,
        stack_trace="",
        fingerprint=fingerprint(error_type, message, f"arq:{reason}"),
        attempts=max(attempts - 1, 0) if reason in ("worker_lost", "max_tries_exceeded") else attempts,
        reason=reason,
        failed_at=datetime.now(UTC),
        enqueued_at=datetime.fromtimestamp(enqueue_ms / 1000, tz=UTC) if enqueue_ms else None,
        correlation_id=correlation_id,
        retry_of=retry_of,
    )

"""Enqueueing: the one helper every caller uses, with the queue taken from the job catalogue.

Jobs travel through Redis as orjson, never pickle (``shared.infra.redis``): a job's arguments
must be JSON (ids, strings, numbers, lists, dicts). A non-JSON argument fails at enqueue time,
in the caller, not in the worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from arq.connections import ArqRedis

from shared.infra.correlation import current_correlation_id
from shared.infra.metrics import Metrics
from shared.infra.tracing import current_traceparent
from shared.jobs.catalogue import queue_of
from shared.jobs.queues import CORRELATION_KWARG, TRACEPARENT_KWARG


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
    """Enqueue ``function(**kwargs)`` on its queue.

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


def call_kwargs(args: Sequence[Any], kwargs: Mapping[str, Any], correlation_id: str | None) -> dict[str, Any]:
    """The job's keyword arguments as every enqueuer sends them: the caller's, plus the correlation
    id and (tracing on) the W3C traceparent. Raises here, in the caller, if an argument is not JSON."""
    job_kwargs = dict(kwargs)
    orjson.dumps([list(args), job_kwargs])
    cid = correlation_id or current_correlation_id()
    if cid:
        job_kwargs[CORRELATION_KWARG] = cid
    traceparent = current_traceparent()
    if traceparent:
        job_kwargs[TRACEPARENT_KWARG] = traceparent
    return job_kwargs


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
    target_queue = queue or queue_of(function)
    if target_queue is None:
        raise UnknownJobFunction(f"no queue is known for job function {function!r}")
    job_kwargs = call_kwargs(args, kwargs, correlation_id)
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

"""Enqueueing a job with a fixed id in one Redis round trip, refused when the id was used.

``shared.jobs.enqueue``'s Lua script (the same check and writes as arq's ``ArqRedis.enqueue_job``,
atomic, without the WATCH that turned a lost connection into "exists already"), with the queue
given rather than looked up in the catalogue. For the redrive executor, which enqueues up to
thousands of replays a second (``shared.redrive_tasks.sending``: ``enqueue_unique_many``, the
calls due together in one pipelined round trip); the payload is arq's own ``serialize_job`` with
our serializer, so workers cannot tell the difference. Same return contract as
``shared.jobs.enqueue.enqueue_call``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from shared.infra.metrics import Metrics
from shared.infra.redis import RedisClient
from shared.jobs.enqueue import ENQUEUE_SCRIPT, call_kwargs, enqueue_script_args


@dataclass(frozen=True, slots=True)
class UniqueCall:
    """One job to enqueue under a fixed id (``enqueue_unique_many``)."""

    function: str
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    job_id: str
    queue: str
    correlation_id: str | None = None


def _script_call(redis: ArqRedis, call: UniqueCall) -> list[Any]:
    """``ENQUEUE_SCRIPT``'s key count, keys and arguments for ``call``, enqueued now."""
    job_kwargs = call_kwargs(call.args, call.kwargs, call.correlation_id)
    return enqueue_script_args(
        redis, call.function, call.args, job_kwargs, job_id=call.job_id, queue=call.queue
    )


async def enqueue_unique(
    redis: ArqRedis,
    function: str,
    *,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    job_id: str,
    queue: str,
    metrics: Metrics | None = None,
    correlation_id: str | None = None,
) -> str | None:
    """Enqueue now on ``queue``; the job id, or ``None`` when that id exists (nothing enqueued)."""
    call = UniqueCall(function, args, kwargs, job_id, queue, correlation_id)
    client: RedisClient = redis  # redis-py's eval is typed for both clients (shared.infra.redis)
    created = await client.eval(ENQUEUE_SCRIPT, *_script_call(redis, call))
    if not created:
        return None
    if metrics is not None:
        metrics.inc(metrics.queue_jobs_enqueued_total, {"queue": queue})
    return job_id


async def enqueue_unique_many(
    redis: ArqRedis, calls: Sequence[UniqueCall], *, metrics: Metrics | None = None
) -> list[str | None]:
    """``enqueue_unique`` for several calls in ONE round trip: a pipeline (not a transaction) of
    the same script, so each call is atomic on its own and refused alone when its id exists.
    Per call, in order: its job id, or ``None`` when refused."""
    if not calls:
        return []
    client: RedisClient = redis
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.eval(ENQUEUE_SCRIPT, *_script_call(redis, call))
    created = await pipe.execute()
    out: list[str | None] = []
    for call, ok in zip(calls, created, strict=True):
        out.append(call.job_id if ok else None)
        if ok and metrics is not None:
            metrics.inc(metrics.queue_jobs_enqueued_total, {"queue": call.queue})
    return out

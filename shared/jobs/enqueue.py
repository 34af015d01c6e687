"""Enqueueing: the one helper every caller uses, with the queue taken from the job catalogue.

Jobs travel through Redis as orjson, never pickle (``shared.infra.redis``): a job's arguments
must be JSON (ids, strings, numbers, lists, dicts). A non-JSON argument fails at enqueue time,
in the caller, not in the worker.

A job is written by one Lua script (``ENQUEUE_SCRIPT``), not arq's ``ArqRedis.enqueue_job``: the
same check and writes (refused when ``arq:job:<id>`` or ``arq:result:<id>`` exists; else arq's
payload with arq's expiry and the queue zset entry), atomic in one round trip. arq's WATCH +
EXISTS + MULTI/EXEC answered a connection lost at EXEC (a Redis restart) with ``None``, "that id
exists already": redis-py turns a connection error while watching into ``WatchError``, which
arq takes for a concurrent enqueue of the same id. The job was usually not written at all, and
the caller, told it already existed, did not try again: a job lost before any worker saw it (the
chaos test's ``permanent_not_once``: a job in neither the DLQ nor the done rows, never run;
tests/reliability/test_faults.py reproduces it). Here a lost connection raises, so a caller
retries; the id makes the retry a no-op if the first call did write the job.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms, to_ms

from shared.infra.correlation import current_correlation_id
from shared.infra.metrics import Metrics
from shared.infra.redis import RedisClient
from shared.infra.tracing import current_traceparent
from shared.jobs.catalogue import queue_of
from shared.jobs.queues import CORRELATION_KWARG, TRACEPARENT_KWARG

# KEYS[1] arq:job:<id>, KEYS[2] arq:result:<id>, KEYS[3] the queue zset; ARGV[1] arq's payload,
# ARGV[2] its expiry (ms), ARGV[3] the job id, ARGV[4] its score (due time, ms). 1 written, 0 refused.
ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return 1
"""


class UnknownJobFunction(ValueError):
    pass


def enqueue_script_args(
    redis: ArqRedis,
    function: str,
    args: Sequence[Any],
    job_kwargs: dict[str, Any],
    *,
    job_id: str,
    queue: str,
    defer_ms: int = 0,
) -> list[Any]:
    """``ENQUEUE_SCRIPT``'s key count, keys and arguments: what arq's ``enqueue_job`` would write
    now (its payload and serializer, its expiry: the deferral plus ``expires_extra_ms``)."""
    now_ms = timestamp_ms()
    payload = serialize_job(function, tuple(args), job_kwargs, None, now_ms, serializer=redis.job_serializer)
    keys = [job_key_prefix + job_id, result_key_prefix + job_id, queue]
    return [3, *keys, payload, defer_ms + redis.expires_extra_ms, job_id, now_ms + defer_ms]


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
    the_id = job_id or uuid.uuid4().hex
    script_args = enqueue_script_args(
        redis,
        function,
        args,
        job_kwargs,
        job_id=the_id,
        queue=target_queue,
        defer_ms=to_ms(defer_by_seconds) or 0,
    )
    client: RedisClient = redis  # redis-py's eval is typed for both clients (shared.infra.redis)
    if not await client.eval(ENQUEUE_SCRIPT, *script_args):
        return None
    if metrics is not None:
        metrics.inc(metrics.queue_jobs_enqueued_total, {"queue": target_queue})
    return the_id

"""Recording a job an operator aborted (``shared.controls.actions.abort_job``), from the worker.

arq cancels the job's task when it sees the abort (``allow_abort_jobs``). The failure decorator
sees that cancellation as ``CancelledError``; if an abort request exists for the job, the job is
recorded here (DLQ reason ``aborted``, resolved at once, with who asked and why) instead of being
treated as a shutdown cancellation. A job aborted before it started reaches arq's
``finish_failed_job`` with a ``CancelledError`` result and is recorded the same way. Never a
failure capture. Never raises.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.controls.records import ended_from_call, record_ended_job
from shared.dlq.reasons import ABORTED
from shared.infra.logs import log_event
from shared.infra.redis import RedisClient, job_abort_key

ABORT_LOOKUP_TIMEOUT_SECONDS = 1.0


async def _abort_request(redis: RedisClient | None, job_id: str) -> dict[str, Any] | None:
    if redis is None:
        return None
    try:
        async with asyncio.timeout(ABORT_LOOKUP_TIMEOUT_SECONDS):
            raw = await redis.get(job_abort_key(job_id))
    except Exception as exc:
        log_event("WARNING", "abort_lookup_failed", job_id=job_id, error_type=type(exc).__name__)
        return None
    if not raw:
        return None
    try:
        data: dict[str, Any] = orjson.loads(raw)
    except ValueError:
        data = {}
    return data


async def record_if_aborted(
    ctx: dict[str, Any],
    *,
    queue: str,
    function: str,
    args: Any,
    kwargs: dict[str, Any],
    correlation_id: str | None,
    job_id: str,
    job_try: int,
) -> bool:
    """True (and recorded) when this cancellation is an operator's abort."""
    redis = ctx.get("redis")
    request = await _abort_request(redis, job_id)
    if request is None:
        return False
    enqueued = ctx.get("enqueue_time")
    ended = ended_from_call(
        queue=queue,
        job_id=job_id,
        function=function,
        args=list(args),
        kwargs=kwargs,
        enqueued_at=enqueued if isinstance(enqueued, datetime) else None,
        attempts=job_try,
        reason=ABORTED,
        actor=str(request.get("by") or "unknown"),
        note=str(request.get("reason") or ""),
        correlation_id=correlation_id,
    )
    await record_ended_job(ctx.get("db"), redis, ended)
    return True


async def record_abort_from_result(
    ctx: dict[str, Any], queue: str, job_id: str, result: dict[str, Any]
) -> None:
    """arq's "aborted before start" path: the job's arq result dict (``f``, ``a``, ``k``, ``t``, ``et``)."""
    raw_kwargs = result.get("k")
    et = result.get("et")
    await record_if_aborted(
        {
            **ctx,
            "enqueue_time": datetime.fromtimestamp(et / 1000, UTC) if isinstance(et, int | float) else None,
        },
        queue=queue,
        function=str(result.get("f") or "<unknown>"),
        args=result.get("a") or [],
        kwargs=dict(raw_kwargs) if isinstance(raw_kwargs, dict) else {},
        correlation_id=None,
        job_id=job_id,
        job_try=int(result.get("t") or 0),
    )

"""What a job waiting for its next try carries for the live view: try n of max, when, last error.

arq keeps none of it (a retried job is only a queue score and a try counter), so the failure
decorator writes it when it turns an error into ``Retry``, on the failure path only (a job that
succeeds first time costs nothing here):

* ``fmhl:job:last_error:{job_id}``: JSON ``{"try", "max_tries", "error_type", "error_message",
  "at", "next_attempt_ms"}``, the message bounded to ``LAST_ERROR_MESSAGE_CHARS``, TTL 1 day;
* ``fmhl:retrying:{queue}``: zset job id → next attempt (epoch ms), the index the live view pages
  over (never a keyspace scan). Members of jobs that finished since are pruned by readers (a
  member counts only while the job is still in the queue) and by age here.

Writing never fails the job: bounded by a timeout, errors are logged and dropped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from shared.infra.logs import log_event
from shared.infra.redis import RedisClient, job_last_error_key, retrying_index_key

LAST_ERROR_MESSAGE_CHARS = 500
RETRY_TRACE_TTL_SECONDS = 86_400
RETRY_TRACE_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class LastError:
    job_try: int
    max_tries: int
    error_type: str
    error_message: str
    at: float
    next_attempt_ms: int

    @classmethod
    def decode(cls, raw: bytes | str) -> LastError | None:
        try:
            data: dict[str, Any] = orjson.loads(raw)
            return cls(
                job_try=int(data["try"]),
                max_tries=int(data["max_tries"]),
                error_type=str(data["error_type"]),
                error_message=str(data["error_message"]),
                at=float(data["at"]),
                next_attempt_ms=int(data["next_attempt_ms"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _bounded(text: str) -> str:
    """At most ``LAST_ERROR_MESSAGE_CHARS`` (+ "…"), lone surrogates written as ``\\udXXX``."""
    text = text[: LAST_ERROR_MESSAGE_CHARS + 1].encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= LAST_ERROR_MESSAGE_CHARS else text[:LAST_ERROR_MESSAGE_CHARS] + "…"


async def record_retry(
    redis: RedisClient | None,
    *,
    queue: str,
    job_id: str,
    job_try: int,
    max_tries: int,
    delay_seconds: float,
    error_type: str,
    error_message: str,
) -> None:
    """Remember why try ``job_try`` failed and when the next one is due. Never raises."""
    if redis is None:
        return
    now = time.time()
    next_ms = int((now + delay_seconds) * 1000)
    index = retrying_index_key(queue)
    try:
        payload = orjson.dumps(
            {
                "try": job_try,
                "max_tries": max_tries,
                "error_type": _bounded(error_type[:256]),
                "error_message": _bounded(error_message),
                "at": now,
                "next_attempt_ms": next_ms,
            }
        )
        async with asyncio.timeout(RETRY_TRACE_TIMEOUT_SECONDS):
            pipe = redis.pipeline(transaction=False)
            pipe.set(job_last_error_key(job_id), payload, ex=RETRY_TRACE_TTL_SECONDS)
            pipe.zadd(index, {job_id: next_ms})
            pipe.zremrangebyscore(index, "-inf", int((now - RETRY_TRACE_TTL_SECONDS) * 1000))
            await pipe.execute()
    except Exception as exc:  # the live view loses a detail; the job must not fail for it
        log_event("WARNING", "retry_trace_write_failed", job_id=job_id, error_type=type(exc).__name__)

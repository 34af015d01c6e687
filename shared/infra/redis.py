"""Redis: the client every process uses, the job wire format, and every key name we own.

The client is arq's ``ArqRedis`` with the orjson job serializer (never pickle). The connection
is lazy (nothing is dialled here), so a process starts even when Redis is down; socket timeouts
keep a hung Redis from hanging a caller forever.

Keys (all under ``fmhl:``; arq's own keys keep arq's names):

| key | type | written by |
| --- | --- | --- |
| ``fmhl:dlq:spool`` | list of DLQ records (JSON) | capture, when Postgres is unreachable |
| ``fmhl:dlq:spool:inflight`` | list | the spool drainer (atomic move, insert, remove) |
| ``fmhl:dlq:spool:rejected`` | list of JSON | records Postgres refused (``shared.dlq.rejects``) |
| ``fmhl:heartbeat:{queue}:{worker_id}`` | string (JSON), TTL | each worker |
| ``fmhl:heartbeats`` | zset: heartbeat key → expiry (epoch s) | each worker (the index readers use) |
| ``fmhl:job:cancelled:{job_id}`` | string (the try), TTL 1 day | failure decorator, when a try is cancelled |
| ``fmhl:job:lost_tries:{job_id}`` | integer, TTL 1 day | ``worker.poison``: tries that vanished |
| ``fmhl:queue:paused:{queue}`` | string (JSON: by, reason, since), no TTL | ``shared.controls.pause`` |
| ``fmhl:job:last_error:{job_id}`` | string (JSON: try, error), TTL 1 day | failure decorator, on ``Retry`` |
| ``fmhl:retrying:{queue}`` | zset: job id → next attempt (epoch ms) | failure decorator, on ``Retry`` |
| ``fmhl:job:abort:{job_id}`` | string (JSON: by, reason, at), TTL 1 day | ``shared.jobs.actions`` |
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

DLQ_SPOOL_KEY: Final = "fmhl:dlq:spool"
DLQ_SPOOL_INFLIGHT_KEY: Final = "fmhl:dlq:spool:inflight"
DLQ_SPOOL_REJECTED_KEY: Final = "fmhl:dlq:spool:rejected"
HEARTBEAT_KEY_PREFIX: Final = "fmhl:heartbeat:"
HEARTBEAT_INDEX_KEY: Final = "fmhl:heartbeats"
CANCELLED_JOB_KEY_PREFIX: Final = "fmhl:job:cancelled:"
QUEUE_PAUSED_KEY_PREFIX: Final = "fmhl:queue:paused:"
JOB_LAST_ERROR_KEY_PREFIX: Final = "fmhl:job:last_error:"
RETRYING_INDEX_KEY_PREFIX: Final = "fmhl:retrying:"
JOB_ABORT_KEY_PREFIX: Final = "fmhl:job:abort:"
JOB_ENDED_KEY_PREFIX: Final = "fmhl:job:ended:"
JOB_LOST_TRIES_KEY_PREFIX: Final = "fmhl:job:lost_tries:"
RESULT_MESSAGE_LIMIT: Final = 8192


def heartbeat_key(queue: str, worker_id: str) -> str:
    return f"{HEARTBEAT_KEY_PREFIX}{queue}:{worker_id}"


def cancelled_job_key(job_id: str) -> str:
    return f"{CANCELLED_JOB_KEY_PREFIX}{job_id}"


def queue_paused_key(queue: str) -> str:
    return f"{QUEUE_PAUSED_KEY_PREFIX}{queue}"


def job_last_error_key(job_id: str) -> str:
    return f"{JOB_LAST_ERROR_KEY_PREFIX}{job_id}"


def retrying_index_key(queue: str) -> str:
    return f"{RETRYING_INDEX_KEY_PREFIX}{queue}"


def job_abort_key(job_id: str) -> str:
    return f"{JOB_ABORT_KEY_PREFIX}{job_id}"


def job_ended_key(job_id: str) -> str:
    return f"{JOB_ENDED_KEY_PREFIX}{job_id}"


def job_lost_tries_key(job_id: str) -> str:
    return f"{JOB_LOST_TRIES_KEY_PREFIX}{job_id}"


def _json_default(value: Any) -> Any:
    """Only for arq's *result* records: a failed job's result is its exception."""
    if isinstance(value, BaseException):
        # bounded and never raising: the DLQ row has the whole story; a message that cannot be
        # rendered or encoded must not cost arq its result record
        try:
            message = str(value)[:RESULT_MESSAGE_LIMIT]
        except Exception:
            message = f"<unprintable {type(value).__name__}>"
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        return {"error_type": type(value).__name__[:256], "error_message": message}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serialize_job(data: dict[str, Any]) -> bytes:
    """Serialize an arq job or result record as JSON (exceptions become type + message)."""
    return orjson.dumps(data, default=_json_default)


def deserialize_job(payload: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(payload)
    return data


def create_redis(url: str, *, timeout_seconds: float = 5.0, max_connections: int = 50) -> ArqRedis:
    pool = ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        max_connections=max_connections,
    )
    return ArqRedis(pool_or_conn=pool, job_serializer=serialize_job, job_deserializer=deserialize_job)


# redis-py annotates its asyncio commands as ``Awaitable[T] | T`` (shared with the sync client),
# which mypy cannot await; code that awaits raw commands takes this alias instead.
RedisClient = Any

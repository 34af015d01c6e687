"""The Redis client every process uses: arq's ``ArqRedis`` with the orjson job serializer.

The connection is lazy (nothing is dialled here), so a process starts even when Redis is down;
socket timeouts keep a hung Redis from hanging a caller forever.
"""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from shared.queues import deserialize_job, serialize_job


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

"""Worker heartbeats in Redis: written by each worker, read by readiness and the queues API.

One key per worker, ``fmhl:heartbeat:{queue}:{worker_id}``, holding JSON (queue, worker id,
host, ongoing jobs, last beat) with a TTL of about three intervals, so a dead worker's key
disappears by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.infra.redis import HEARTBEAT_KEY_PREFIX, heartbeat_key

HEARTBEAT_INTERVAL_SECONDS = 5.0
HEARTBEAT_TTL_SECONDS = 15


@dataclass(frozen=True, slots=True)
class Heartbeat:
    queue: str
    worker_id: str
    host: str
    ongoing_jobs: int
    last_beat: float

    def age_seconds(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.time()) - self.last_beat)


async def write_heartbeat(redis: Redis, beat: Heartbeat, ttl_seconds: int = HEARTBEAT_TTL_SECONDS) -> None:
    payload = orjson.dumps(
        {
            "queue": beat.queue,
            "worker_id": beat.worker_id,
            "host": beat.host,
            "ongoing_jobs": beat.ongoing_jobs,
            "last_beat": beat.last_beat,
        }
    )
    await redis.set(heartbeat_key(beat.queue, beat.worker_id), payload, ex=ttl_seconds)


async def delete_heartbeat(redis: Redis, queue: str, worker_id: str) -> None:
    await redis.delete(heartbeat_key(queue, worker_id))


async def read_heartbeats(redis: Redis) -> list[Heartbeat]:
    """All live heartbeats (a handful of keys: one per worker process)."""
    keys = [key async for key in redis.scan_iter(match=f"{HEARTBEAT_KEY_PREFIX}*", count=200)]
    if not keys:
        return []
    beats = []
    for raw in await redis.mget(keys):
        if raw is None:
            continue  # expired between SCAN and MGET
        data: dict[str, Any] = orjson.loads(raw)
        beats.append(
            Heartbeat(
                queue=str(data["queue"]),
                worker_id=str(data["worker_id"]),
                host=str(data.get("host", "")),
                ongoing_jobs=int(data.get("ongoing_jobs", 0)),
                last_beat=float(data["last_beat"]),
            )
        )
    return beats

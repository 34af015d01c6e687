"""Worker heartbeats in Redis: written by each worker, read by readiness and the queues API.

One key per worker, ``fmhl:heartbeat:{queue}:{worker_id}``, holding JSON (queue, worker id,
host, ongoing jobs, last beat, and ``running``: the id and start time of each job it runs, at most
its ``max_jobs``, which the live jobs view reads) with a TTL of about three intervals, so a dead worker's key
disappears by itself. Readers find the keys through an index, the zset ``fmhl:heartbeats``
(member: the key, score: its expiry), never by ``SCAN``: a scan walks the whole keyspace, and
with a backlog of a million queued jobs (a million ``arq:job:*`` keys) it took seconds, long
enough for the queues API, readiness and the console overview to time out. Expired members are
pruned on read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from shared.infra.redis import HEARTBEAT_INDEX_KEY, heartbeat_key

HEARTBEAT_INTERVAL_SECONDS = 5.0
HEARTBEAT_TTL_SECONDS = 15


@dataclass(frozen=True, slots=True)
class Heartbeat:
    queue: str
    worker_id: str
    host: str
    ongoing_jobs: int
    last_beat: float
    # (job id, started at, epoch s) of every job this worker runs
    running: tuple[tuple[str, float], ...] = ()

    def age_seconds(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.time()) - self.last_beat)


async def write_heartbeat(redis: Redis, beat: Heartbeat, ttl_seconds: int = HEARTBEAT_TTL_SECONDS) -> None:
    key = heartbeat_key(beat.queue, beat.worker_id)
    payload = orjson.dumps(
        {
            "queue": beat.queue,
            "worker_id": beat.worker_id,
            "host": beat.host,
            "ongoing_jobs": beat.ongoing_jobs,
            "last_beat": beat.last_beat,
            "running": [list(item) for item in beat.running],
        }
    )
    pipe = redis.pipeline(transaction=False)
    pipe.set(key, payload, ex=ttl_seconds)
    pipe.zadd(HEARTBEAT_INDEX_KEY, {key: time.time() + ttl_seconds})
    await pipe.execute()


async def delete_heartbeat(redis: Redis, queue: str, worker_id: str) -> None:
    key = heartbeat_key(queue, worker_id)
    pipe = redis.pipeline(transaction=False)
    pipe.delete(key)
    pipe.zrem(HEARTBEAT_INDEX_KEY, key)
    await pipe.execute()


async def read_heartbeats(redis: Redis) -> list[Heartbeat]:
    """All live heartbeats (a handful of keys: one per worker process), from the index."""
    pipe = redis.pipeline(transaction=False)
    pipe.zremrangebyscore(HEARTBEAT_INDEX_KEY, "-inf", time.time())
    pipe.zrange(HEARTBEAT_INDEX_KEY, 0, -1)
    _, keys = await pipe.execute()
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
                running=tuple((str(job_id), float(started)) for job_id, started in data.get("running", [])),
            )
        )
    return beats

"""Queue monitoring, computed cheaply: one Redis pipeline, worker heartbeats, one indexed query.

Never ``queued_jobs()`` or ``all_job_results()`` (they read every job: ~1 s at 5k jobs).
depth = ``ZCARD`` (arq keeps a job in the queue zset until it finishes, so queued + in
progress); deferred = ``ZCOUNT (now +inf``; oldest age = now - score of ``ZRANGE 0 0 WITHSCORES``
when that job is due; active = the workers' heartbeats; paused = the queue's pause key
(``shared.controls.pause``, ``None`` when running); failed_last_hour and dlq_size from the DLQ.
A backend that cannot be reached raises ``DependencyUnavailable`` (503), never zeros.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.infra.db import Database, fetch
from shared.infra.errors import DependencyUnavailable
from shared.infra.metrics import Metrics
from shared.infra.redis import RedisClient
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.pause_state import PauseState, read_pauses
from shared.jobs.queues import JOB_QUEUES, JobQueueName

STATS_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One job queue: depth = queued + in progress; failures and DLQ size from Postgres."""

    name: JobQueueName
    depth: int
    active: int
    deferred: int
    oldest_job_age_seconds: float
    failed_last_hour: int
    dlq_size: int
    paused: PauseState | None = None


@dataclass(frozen=True, slots=True)
class _RedisSide:
    depth: int
    deferred: int
    oldest_age: float
    paused: PauseState | None = None


async def _redis_side(
    redis: RedisClient, queues: Sequence[str]
) -> tuple[dict[str, _RedisSide], dict[str, int]]:
    now_ms = time.time() * 1000
    pipe = redis.pipeline(transaction=False)
    for queue in queues:
        pipe.zcard(queue)
        pipe.zcount(queue, f"({int(now_ms)}", "+inf")
        pipe.zrange(queue, 0, 0, withscores=True)
    replies = await pipe.execute()
    pauses = await read_pauses(redis, queues)
    sides = {}
    for index, queue in enumerate(queues):
        depth, deferred, head = replies[index * 3 : index * 3 + 3]
        oldest = 0.0
        if head:
            score = float(head[0][1])
            oldest = max(0.0, (now_ms - score) / 1000)
        sides[queue] = _RedisSide(int(depth), int(deferred), round(oldest, 3), pauses[queue])
    active: dict[str, int] = {}
    for beat in await read_heartbeats(redis):
        active[beat.queue] = active.get(beat.queue, 0) + beat.ongoing_jobs
    return sides, active


# dlq_size from the dlq_groups counters (O(groups)); failed_last_hour from an index range scan
# of the last hour per queue (O(failures in the last hour)), never a scan of the whole DLQ.
# An operator's cancel or abort leaves a DLQ row too: a record, not a failure. (``jobs`` may not
# import ``dlq``: tests/unit/test_dlq_reasons.py checks this list is shared.dlq.reasons.CONTROL_REASONS.)
DLQ_COUNTS = """
SELECT q.queue_name,
       coalesce((SELECT sum(g.unresolved_count) FROM dlq_groups AS g
                 WHERE g.queue_name = q.queue_name), 0) AS dlq_size,
       (SELECT count(*) FROM dead_letter_queue AS d
        WHERE d.queue_name = q.queue_name AND d.failed_at > now() - interval '1 hour'
          AND d.reason NOT IN ('cancelled', 'aborted')) AS failed_last_hour
FROM unnest($1::text[]) AS q(queue_name)
"""


async def _dlq_side(pool: Any, queues: Sequence[str]) -> dict[str, tuple[int, int]]:
    async with pool.acquire() as conn:
        rows = await fetch(conn, "queue_stats_dlq_counts", DLQ_COUNTS, list(queues))
    return {row["queue_name"]: (int(row["dlq_size"]), int(row["failed_last_hour"])) for row in rows}


async def collect_queue_stats(
    db: Database, redis: RedisClient, queues: Sequence[JobQueueName] = JOB_QUEUES
) -> list[QueueStats]:
    """Stats for ``queues``; raises ``DependencyUnavailable`` naming the backend that failed."""

    async def redis_part() -> tuple[dict[str, _RedisSide], dict[str, int]]:
        try:
            return await asyncio.wait_for(_redis_side(redis, queues), STATS_TIMEOUT_SECONDS)
        except Exception as exc:
            raise DependencyUnavailable("redis", f"queue state unreadable ({type(exc).__name__})") from exc

    async def postgres_part() -> dict[str, tuple[int, int]]:
        try:
            return await asyncio.wait_for(_dlq_side(db.pool, queues), STATS_TIMEOUT_SECONDS)
        except DependencyUnavailable:
            raise
        except Exception as exc:
            raise DependencyUnavailable("postgres", f"DLQ counts unreadable ({type(exc).__name__})") from exc

    (sides, active), dlq = await asyncio.gather(redis_part(), postgres_part())
    return [
        QueueStats(
            name=queue,
            depth=sides[queue].depth,
            active=active.get(queue, 0),
            deferred=sides[queue].deferred,
            oldest_job_age_seconds=sides[queue].oldest_age,
            failed_last_hour=dlq.get(queue, (0, 0))[1],
            dlq_size=dlq.get(queue, (0, 0))[0],
            paused=sides[queue].paused,
        )
        for queue in queues
    ]


def export_queue_gauges(stats: Sequence[QueueStats], metrics: Metrics) -> None:
    for item in stats:
        metrics.set(metrics.queue_depth, item.depth, {"queue": item.name})
        metrics.set(metrics.queue_oldest_job_age_seconds, item.oldest_job_age_seconds, {"queue": item.name})
        metrics.set(metrics.dlq_size, item.dlq_size, {"queue": item.name})
        metrics.set(metrics.queue_paused, 1 if item.paused else 0, {"queue": item.name})

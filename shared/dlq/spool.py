"""Drain spooled DLQ records (pushed to Redis while Postgres was down) into Postgres.

Exactly once, even with concurrent drainers or one that dies mid-way: each record is moved
atomically (``LMOVE``) from the spool to an in-flight list, inserted with the idempotent
``insert_failure`` (unique on queue + job id), and only then removed from the in-flight list.
A drainer also replays whatever is in the in-flight list first, so a crash between the move and
the insert loses nothing; a record inserted twice is a no-op, so a row is never written twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.dlq.capture import FailureRecord, insert_failure
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.infra.redis import DLQ_SPOOL_INFLIGHT_KEY, DLQ_SPOOL_KEY, RedisClient


@dataclass(frozen=True, slots=True)
class DrainResult:
    inserted: int
    duplicates: int
    unreadable: int


async def spool_size(redis: RedisClient) -> int:
    pipe = redis.pipeline(transaction=False)
    pipe.llen(DLQ_SPOOL_KEY)
    pipe.llen(DLQ_SPOOL_INFLIGHT_KEY)
    spooled, inflight = await pipe.execute()
    return int(spooled) + int(inflight)


async def _insert(pool: Any, payload: bytes, metrics: Metrics | None) -> bool | None:
    """True inserted, False duplicate, None unreadable (logged whole at ERROR, then dropped)."""
    try:
        record = FailureRecord.from_json(payload)
    except (ValueError, TypeError, KeyError) as exc:
        log_event(
            "ERROR",
            "dlq_spool_unreadable",
            error_type=type(exc).__name__,
            payload=payload.decode(errors="replace"),
        )
        return None
    async with pool.acquire() as conn:
        stored = await insert_failure(conn, record) is not None
    if stored and metrics is not None:
        # Counted when the capture becomes a DLQ row, not when it was spooled.
        metrics.inc(metrics.dlq_captured_total, {"queue": record.queue})
    return stored


async def drain_spool(
    pool: Any, redis: RedisClient, metrics: Metrics | None = None, *, limit: int = 10_000
) -> DrainResult:
    """Move up to ``limit`` spooled records into Postgres. Raises if Postgres fails (retry later)."""
    inserted = duplicates = unreadable = 0
    # 1. Records a previous (possibly dead) drainer moved but may not have inserted.
    for payload in await redis.lrange(DLQ_SPOOL_INFLIGHT_KEY, 0, -1):
        outcome = await _insert(pool, payload, metrics)
        inserted, duplicates, unreadable = _count(outcome, inserted, duplicates, unreadable)
        await redis.lrem(DLQ_SPOOL_INFLIGHT_KEY, 1, payload)
    # 2. New records, one atomic move at a time.
    for _ in range(limit):
        payload = await redis.lmove(DLQ_SPOOL_KEY, DLQ_SPOOL_INFLIGHT_KEY, "LEFT", "RIGHT")
        if payload is None:
            break
        try:
            outcome = await _insert(pool, payload, metrics)
        except Exception:
            # Postgres failed again: put the record back at the head of the spool and stop.
            pipe = redis.pipeline(transaction=True)
            pipe.lrem(DLQ_SPOOL_INFLIGHT_KEY, 1, payload)
            pipe.lpush(DLQ_SPOOL_KEY, payload)
            await pipe.execute()
            raise
        inserted, duplicates, unreadable = _count(outcome, inserted, duplicates, unreadable)
        await redis.lrem(DLQ_SPOOL_INFLIGHT_KEY, 1, payload)
    if inserted or duplicates or unreadable:
        log_event(
            "INFO", "dlq_spool_drained", inserted=inserted, duplicates=duplicates, unreadable=unreadable
        )
    return DrainResult(inserted, duplicates, unreadable)


def _count(outcome: bool | None, inserted: int, duplicates: int, unreadable: int) -> tuple[int, int, int]:
    if outcome is None:
        return inserted, duplicates, unreadable + 1
    if outcome:
        return inserted + 1, duplicates, unreadable
    return inserted, duplicates + 1, unreadable

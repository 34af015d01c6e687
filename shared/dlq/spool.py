"""Drain spooled DLQ records (pushed to Redis while Postgres was down) into Postgres.

Exactly once, even with concurrent drainers or one that dies mid-way: each record is moved
atomically (``LMOVE``) from the spool to an in-flight list, inserted with the idempotent
``insert_failure`` (unique on queue + job id), and only then removed from the in-flight list.
A drainer also replays whatever is in the in-flight list first, so a crash between the move and
the insert loses nothing; a record inserted twice is a no-op, so a row is never written twice.

A record Postgres *refuses* (``shared.dlq.rejects.is_refusal``: a data error, a constraint, a
size limit — anything but an outage) never blocks the records behind it: it moves, in one
transaction, from the in-flight list to ``fmhl:dlq:spool:rejected`` with the refusal, and the
drain goes on. So does an unreadable payload. Only an outage stops a drain (the record goes back
to the head of the spool and the error propagates: retry later).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.dlq.capture import FailureRecord
from shared.dlq.group_commit import insert_failure
from shared.dlq.rejects import describe, is_refusal, rejected_entry
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.infra.redis import (
    DLQ_SPOOL_INFLIGHT_KEY,
    DLQ_SPOOL_KEY,
    DLQ_SPOOL_REJECTED_KEY,
    RedisClient,
)


@dataclass(frozen=True, slots=True)
class DrainResult:
    inserted: int
    duplicates: int
    unreadable: int
    rejected: int = 0


async def spool_size(redis: RedisClient) -> int:
    pipe = redis.pipeline(transaction=False)
    pipe.llen(DLQ_SPOOL_KEY)
    pipe.llen(DLQ_SPOOL_INFLIGHT_KEY)
    spooled, inflight = await pipe.execute()
    return int(spooled) + int(inflight)


class _Refused(Exception):
    def __init__(self, record_json: bytes, error: str) -> None:
        super().__init__(error)
        self.record_json = record_json
        self.error = error


async def _insert(pool: Any, payload: bytes, metrics: Metrics | None) -> bool:
    """True inserted, False duplicate; ``_Refused`` for an unreadable or refused record."""
    try:
        record = FailureRecord.from_json(payload)
    except (ValueError, TypeError, KeyError) as exc:
        text = payload.decode("utf-8", "replace")
        raise _Refused(orjson.dumps(text), f"unreadable spool record: {describe(exc)}") from exc
    try:
        async with pool.acquire() as conn:
            stored = await insert_failure(conn, record) is not None
    except Exception as exc:
        if not is_refusal(exc):
            raise
        raise _Refused(payload, describe(exc)) from exc
    if stored and metrics is not None:
        # Counted when the capture becomes a DLQ row, not when it was spooled.
        metrics.inc(metrics.dlq_captured_total, {"queue": record.queue})
    return stored


async def _park(redis: RedisClient, payload: bytes, refused: _Refused) -> None:
    """In-flight → rejected, atomically."""
    pipe = redis.pipeline(transaction=True)
    pipe.rpush(DLQ_SPOOL_REJECTED_KEY, rejected_entry(refused.record_json, refused.error))
    pipe.lrem(DLQ_SPOOL_INFLIGHT_KEY, 1, payload)
    await pipe.execute()
    log_event("ERROR", "dlq_spool_record_rejected", error=refused.error, bytes=len(payload))


async def _drain_one(pool: Any, redis: RedisClient, payload: bytes, metrics: Metrics | None) -> str:
    """'inserted' | 'duplicate' | 'unreadable' | 'rejected'; raises on an outage (record in flight)."""
    try:
        outcome = "inserted" if await _insert(pool, payload, metrics) else "duplicate"
    except _Refused as refused:
        await _park(redis, payload, refused)
        return "unreadable" if refused.error.startswith("unreadable") else "rejected"
    await redis.lrem(DLQ_SPOOL_INFLIGHT_KEY, 1, payload)
    return outcome


async def drain_spool(
    pool: Any, redis: RedisClient, metrics: Metrics | None = None, *, limit: int = 10_000
) -> DrainResult:
    """Move up to ``limit`` spooled records into Postgres. Raises if Postgres is unreachable."""
    counts = {"inserted": 0, "duplicate": 0, "unreadable": 0, "rejected": 0}
    # 1. Records a previous (possibly dead) drainer moved but may not have inserted.
    for payload in await redis.lrange(DLQ_SPOOL_INFLIGHT_KEY, 0, -1):
        counts[await _drain_one(pool, redis, payload, metrics)] += 1
    # 2. New records, one atomic move at a time.
    for _ in range(limit):
        payload = await redis.lmove(DLQ_SPOOL_KEY, DLQ_SPOOL_INFLIGHT_KEY, "LEFT", "RIGHT")
        if payload is None:
            break
        try:
            counts[await _drain_one(pool, redis, payload, metrics)] += 1
        except Exception:
            # Postgres is unreachable: put the record back at the head of the spool and stop.
            pipe = redis.pipeline(transaction=True)
            pipe.lrem(DLQ_SPOOL_INFLIGHT_KEY, 1, payload)
            pipe.lpush(DLQ_SPOOL_KEY, payload)
            await pipe.execute()
            raise
    result = DrainResult(counts["inserted"], counts["duplicate"], counts["unreadable"], counts["rejected"])
    if any(counts.values()):
        log_event(
            "INFO",
            "dlq_spool_drained",
            inserted=result.inserted,
            duplicates=result.duplicates,
            unreadable=result.unreadable,
            rejected=result.rejected,
        )
    return result

"""The dead-letter queue: one Postgres row per job that failed for good, never lost, never twice.

``capture`` never raises. It tries Postgres (``INSERT ... ON CONFLICT (queue_name, job_id) DO
NOTHING``: a second capture of the same job is a no-op); if Postgres cannot be reached it pushes
the record onto a Redis list (the spool, drained by ``shared.dlq.spool``); if Redis is down too,
the whole record is logged at ERROR as one JSON line (``dlq_capture_lost_to_log``), so an
operator can still replay it from the logs. A record Postgres *refuses* (``shared.dlq.rejects``)
goes to the rejected list instead of the spool, where replaying it would only fail again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from shared.dlq.content import safe_preview
from shared.dlq.group_commit import committer_for
from shared.dlq.rejects import describe, is_refusal, reject
from shared.infra.db import Database
from shared.infra.errors import DependencyUnavailable
from shared.infra.jsonable import dataclass_to_dict
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.infra.redis import DLQ_SPOOL_KEY, RedisClient
from shared.infra.tracing import current_ids, traced

CAPTURE_DB_TIMEOUT_SECONDS = 5.0
CAPTURE_REDIS_TIMEOUT_SECONDS = 3.0

CaptureOutcome = Literal["stored", "duplicate", "spooled", "rejected", "logged"]


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Everything an on-call engineer needs to understand and replay a failed job."""

    queue: str
    job_id: str
    function: str
    args: list[Any]
    kwargs: dict[str, Any]
    error_type: str
    error_message: str
    stack_trace: str
    fingerprint: str
    attempts: int
    reason: str
    failed_at: datetime
    enqueued_at: datetime | None = None
    correlation_id: str | None = None
    retry_of: uuid.UUID | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # shared.dlq.content: text and payload strings are in the escaped form; payload not stored, why
    content_escaped: bool = False
    payload_omitted: str | None = None
    # shared.dlq.raw_preview: base64 of the first bytes of a job body no codec could read
    raw_preview: str | None = None
    # shared.infra.tracing: the trace of the span that captured it (32 hex digits), when tracing is on
    trace_id: str | None = None
    # ... and the id of that capturing span (16 hex digits): a DLQ retry links its run to it
    span_id: str | None = None

    def to_json(self) -> bytes:
        data = dataclass_to_dict(self)
        data["failed_at"] = self.failed_at.isoformat()
        data["enqueued_at"] = self.enqueued_at.isoformat() if self.enqueued_at else None
        data["retry_of"] = str(self.retry_of) if self.retry_of else None
        return orjson.dumps(data, default=str)

    @classmethod
    def from_json(cls, payload: bytes | str) -> FailureRecord:
        data = orjson.loads(payload)
        data["failed_at"] = datetime.fromisoformat(data["failed_at"])
        data["enqueued_at"] = datetime.fromisoformat(data["enqueued_at"]) if data.get("enqueued_at") else None
        data["retry_of"] = uuid.UUID(data["retry_of"]) if data.get("retry_of") else None
        return cls(**data)


async def _store(db: Database, record: FailureRecord) -> uuid.UUID | None:
    """Group commit (``shared.dlq.group_commit``): returns once this record's row is committed."""
    return await committer_for(db).store(record)


@traced("dlq capture")
async def capture(
    db: Database | None,
    redis: RedisClient | None,
    record: FailureRecord,
    metrics: Metrics | None,
) -> CaptureOutcome:
    """Record a final failure. Never raises (an exception in an arq hook kills the worker).

    ``db`` is ``None`` in a process without a database, and ``db.pool`` raises while it is not
    connected yet; either sends the record to the spool with a plain "no database" reason.
    """
    ids = current_ids()  # tracing on: the row keeps the trace it was captured in
    if ids is not None and record.trace_id is None:
        record = dataclasses.replace(record, trace_id=ids[0], span_id=ids[1])
    try:
        if db is None:
            raise DependencyUnavailable("postgres", "no database in this process")
        db.pool  # noqa: B018 - raises DependencyUnavailable while not connected: spool at once
        async with asyncio.timeout(CAPTURE_DB_TIMEOUT_SECONDS * 2):  # no task per capture (3.11)
            entry_id = await _store(db, record)
        outcome: CaptureOutcome = "stored" if entry_id is not None else "duplicate"
        if metrics is not None and outcome == "stored":
            metrics.inc(metrics.dlq_captured_total, {"queue": record.queue})
        log_event(
            "WARNING",
            "dlq_captured" if outcome == "stored" else "dlq_capture_duplicate",
            queue=record.queue,
            job_id=record.job_id,
            function=record.function,
            reason=record.reason,
            error_type=record.error_type,
            fingerprint=record.fingerprint,
            attempts=record.attempts,
            dlq_id=str(entry_id) if entry_id else None,
        )
        return outcome
    except Exception as db_error:
        # refused (not unreachable): the spool would only replay the refusal; park it visibly
        refused = is_refusal(db_error)
        pg_error = db_error.message if isinstance(db_error, DependencyUnavailable) else describe(db_error)
    try:
        if redis is None:
            raise ConnectionError("no redis client")
        if refused:
            await asyncio.wait_for(
                reject(redis, record.to_json(), pg_error), timeout=CAPTURE_REDIS_TIMEOUT_SECONDS
            )
            log_event(
                "ERROR",
                "dlq_capture_rejected",
                queue=record.queue,
                job_id=record.job_id,
                function=record.function,
                postgres_error=pg_error,
            )
            return "rejected"
        await asyncio.wait_for(
            redis.rpush(DLQ_SPOOL_KEY, record.to_json()), timeout=CAPTURE_REDIS_TIMEOUT_SECONDS
        )
        log_event(
            "WARNING",
            "dlq_spooled",
            queue=record.queue,
            job_id=record.job_id,
            function=record.function,
            reason=record.reason,
            postgres_error=pg_error,
        )
        return "spooled"
    except Exception as redis_error:
        log_event(
            "ERROR",
            "dlq_capture_lost_to_log",
            "DLQ capture failed in Postgres and Redis; the full record is in this line",
            postgres_error=pg_error,
            redis_error=describe(redis_error),
            record=_loggable(record),
        )
        return "logged"


def _loggable(record: FailureRecord) -> Any:
    try:
        return orjson.loads(record.to_json())
    except Exception:  # a record not built by worker.failure_records (unescaped text)
        return safe_preview(record)

"""The trace a cancelled or aborted job leaves: one DLQ row, resolved at once.

An operator's cancel (queued, scheduled, retrying) or abort (running) removes a job before it
could finish; the row keeps what the job carried (function, arguments, correlation id, tries),
who ended it and why (``resolved_by``, ``resolution_note``), so it can still be found, and retried
from the DLQ if it was a mistake. Reason ``cancelled`` / ``aborted`` (``shared.dlq.reasons``),
``resolution`` ``manual``: it needs no one's attention, which keeps it out of ``dlq_size``.

Stored like a failure (``shared.dlq.content``): text Postgres cannot hold is escaped, a payload
over the limit is omitted with a preview. The insert is idempotent on (queue, job id).
When Postgres cannot be reached from a worker, ``record_ended_job`` falls back to the capture
path (spool, then log), where the row arrives unresolved: still never lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.dlq.capture import FailureRecord, capture
from shared.dlq.content import (
    ERROR_MESSAGE_LIMIT,
    escape_text,
    map_strings,
    needs_escape,
    payload_size_error,
    safe_preview,
    stored_identifier,
    truncate_head,
)
from shared.dlq.fingerprint import fingerprint
from shared.dlq.reasons import ABORTED, CANCELLED, ControlReason
from shared.infra.db import Conn, Database, fetchval
from shared.infra.logs import log_event
from shared.infra.redis import RedisClient
from shared.jobs.queues import split_reserved_kwargs

ERROR_TYPES: dict[str, str] = {CANCELLED: "JobCancelled", ABORTED: "JobAborted"}
RESOLUTION = "manual"


@dataclass(frozen=True, slots=True)
class EndedJob:
    queue: str
    job_id: str
    function: str
    args: list[Any]
    kwargs: dict[str, Any]
    correlation_id: str | None
    enqueued_at: datetime | None
    attempts: int
    reason: ControlReason  # CANCELLED or ABORTED
    actor: str
    note: str
    ended_at: datetime

    @property
    def message(self) -> str:
        verb = "cancelled" if self.reason == CANCELLED else "aborted while running"
        return f"{verb} by {self.actor}" + (f": {self.note}" if self.note else "")


def ended_from_definition(
    *,
    queue: str,
    job_id: str,
    definition: bytes | None,
    tries: int,
    reason: ControlReason,
    actor: str,
    note: str,
) -> EndedJob:
    """From arq's job definition (``f``, ``a``, ``k``, ``et``); an undecodable one keeps a preview."""
    function, args, kwargs, enqueued_at = "<expired>", [], {}, None
    if definition is not None:
        try:
            data: dict[str, Any] = orjson.loads(definition)
            function = str(data.get("f"))
            args = list(data.get("a") or [])
            kwargs = dict(data.get("k") or {})
            et = data.get("et")
            enqueued_at = datetime.fromtimestamp(et / 1000, UTC) if et else None
        except (ValueError, TypeError):
            function, kwargs = "<undecodable>", {"preview": safe_preview(definition)}
    return ended_from_call(
        queue=queue,
        job_id=job_id,
        function=function,
        args=args,
        kwargs=kwargs,
        enqueued_at=enqueued_at,
        attempts=tries,
        reason=reason,
        actor=actor,
        note=note,
    )


def ended_from_call(
    *,
    queue: str,
    job_id: str,
    function: str,
    args: list[Any],
    kwargs: dict[str, Any],
    enqueued_at: datetime | None,
    attempts: int,
    reason: ControlReason,
    actor: str,
    note: str,
    correlation_id: str | None = None,
) -> EndedJob:
    clean, cid, _ = split_reserved_kwargs(kwargs)
    cid = cid or correlation_id
    return EndedJob(
        queue=queue,
        job_id=job_id,
        function=function,
        args=list(args),
        kwargs=clean,
        correlation_id=str(cid) if cid else None,
        enqueued_at=enqueued_at,
        attempts=attempts,
        reason=reason,
        actor=actor,
        note=note,
        ended_at=datetime.now(UTC),
    )


def _storable(ended: EndedJob) -> dict[str, Any]:
    """The row's values in their stored form (escaped, bounded, payload omitted if too large)."""
    message = truncate_head(ended.message, ERROR_MESSAGE_LIMIT, "error_message")
    try:
        payload_nul = b"\\u0000" in orjson.dumps([ended.args, ended.kwargs])
    except TypeError:
        payload_nul = True
    texts = (ended.job_id, ended.function, message, ended.correlation_id or "")
    escaped = payload_nul or any(needs_escape(text) for text in texts)
    args: Any = ended.args
    kwargs: Any = ended.kwargs
    omitted: str | None = None
    try:
        if escaped:
            args, kwargs = map_strings(args, escape_text), map_strings(kwargs, escape_text)
        omitted = payload_size_error(args, kwargs)
    except (ValueError, TypeError) as exc:
        omitted = f"arguments are not storable as JSON ({exc})"
    if omitted is not None:
        omitted = f"{omitted}; preview: {safe_preview({'args': args, 'kwargs': kwargs})}"
        omitted = omitted.encode("utf-8", "backslashreplace").decode().replace("\x00", "")
        args, kwargs = [], {}
    error_type = ERROR_TYPES[ended.reason]
    return {
        "job_id": stored_identifier(ended.job_id, escaped, job_id=True),
        "function": stored_identifier(ended.function, escaped),
        "args": args,
        "kwargs": kwargs,
        "error_type": error_type,
        "error_message": escape_text(message) if escaped else message,
        # one group per function and action, whoever ended it and why
        "fingerprint": fingerprint(error_type, f"{ended.reason} by an operator"),
        "correlation_id": (
            escape_text(ended.correlation_id[:256])
            if escaped and ended.correlation_id
            else (ended.correlation_id[:256] if ended.correlation_id else None)
        ),
        "content_escaped": escaped,
        "payload_omitted": omitted,
    }


INSERT_ENDED = """
INSERT INTO dead_letter_queue (
    queue_name, job_id, function, args, kwargs, error_type, error_message, fingerprint, attempts,
    reason, enqueued_at, failed_at, correlation_id, resolved_at, resolved_by, resolution,
    resolution_note, content_escaped, payload_omitted
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $12, $14, $15, $16, $17, $18)
ON CONFLICT (queue_name, job_id) DO NOTHING
RETURNING id
"""


async def insert_ended(conn: Conn, ended: EndedJob) -> uuid.UUID | None:
    """The resolved DLQ row; ``None`` when the job already has one (idempotent)."""
    row = _storable(ended)
    entry_id: uuid.UUID | None = await fetchval(
        conn,
        "dlq_insert_ended_job",
        INSERT_ENDED,
        ended.queue,
        row["job_id"],
        row["function"],
        row["args"],
        row["kwargs"],
        row["error_type"],
        row["error_message"],
        row["fingerprint"],
        ended.attempts,
        ended.reason,
        ended.enqueued_at,
        ended.ended_at,
        row["correlation_id"],
        ended.actor[:256],
        RESOLUTION,
        ended.note or None,
        row["content_escaped"],
        row["payload_omitted"],
    )
    return entry_id


async def record_ended_job(db: Database | None, redis: RedisClient | None, ended: EndedJob) -> None:
    """From a worker (abort): the resolved row, or the capture path if Postgres is out. Never raises."""
    try:
        if db is None:
            raise ConnectionError("no database in this process")
        async with db.pool.acquire() as conn:
            entry_id = await insert_ended(conn, ended)
        log_event(
            "WARNING",
            f"job_{ended.reason}",
            queue=ended.queue,
            job_id=ended.job_id,
            function=ended.function,
            actor=ended.actor,
            dlq_id=str(entry_id) if entry_id else None,
        )
        return
    except Exception as exc:
        log_event("WARNING", "job_end_record_deferred", job_id=ended.job_id, error_type=type(exc).__name__)
    row = _storable(ended)
    record = FailureRecord(
        queue=ended.queue,
        job_id=row["job_id"],
        function=row["function"],
        args=row["args"],
        kwargs=row["kwargs"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        stack_trace="",
        fingerprint=row["fingerprint"],
        attempts=ended.attempts,
        reason=ended.reason,
        failed_at=ended.ended_at,
        enqueued_at=ended.enqueued_at,
        correlation_id=row["correlation_id"],
        content_escaped=row["content_escaped"],
        payload_omitted=row["payload_omitted"],
    )
    await capture(None, redis, record, None)

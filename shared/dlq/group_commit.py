"""Group commit of DLQ captures: concurrent failures share one INSERT, each awaits its own row.

In a failure storm every job used to pay a whole transaction (and a commit flush) of its own,
and all of a storm's rows upsert the same ``dlq_groups`` counter row, so captures queued behind
one another's row lock. Here the first capture of an idle process is written at once (no added
latency); captures arriving while a write is in flight join the next batch, one multi-row
``INSERT ... SELECT FROM unnest(...)`` of up to ``MAX_BATCH`` rows.

Under a storm that alone is not enough: a statement takes about a millisecond, so the captures
that arrive while one is in flight are one or two, and the storm still paid nearly a statement
(parse, trigger, commit, two socket round trips) per failure (``make bench``, issue 17 §2). So
while captures are *concurrent* (a write shared by two or more of them, or more arriving while one
was written, within the last ``STORM_WINDOW_SECONDS``), a batch waits up to
``STORM_LINGER_SECONDS`` for company before it is written: a storm's failures are stored tens to a
statement, each job held a few milliseconds longer. An isolated failure, and captures that come
one after another from a single caller, are still written at once.

The promise is unchanged: ``store`` returns only after *its* row is committed (or raises, and
the caller spools the record), so a job is never acknowledged before its failure is durable.
A batch the database refuses as a whole is retried row by row, so one bad record cannot take
its neighbours down with it. A row that appears twice (same queue and job id) is stored once.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from shared.infra.db import Conn, Database, fetch, fetchval

if TYPE_CHECKING:
    from shared.dlq.capture import FailureRecord

MAX_BATCH = 500
BATCH_TIMEOUT_SECONDS = 10.0
STORM_WINDOW_SECONDS = 0.02
STORM_LINGER_SECONDS = 0.005

INSERT_FAILURES = """
INSERT INTO dead_letter_queue (
    queue_name, job_id, function, args, kwargs, error_type, error_message, stack_trace,
    fingerprint, attempts, reason, enqueued_at, failed_at, correlation_id, retry_of,
    content_escaped, payload_omitted, raw_preview, trace_id, span_id
)
SELECT r.queue_name, r.job_id, r.function, r.args::jsonb, r.kwargs::jsonb, r.error_type,
       r.error_message, r.stack_trace, r.fingerprint, r.attempts, r.reason, r.enqueued_at,
       r.failed_at, r.correlation_id, previous.id, r.content_escaped, r.payload_omitted, r.raw_preview,
       r.trace_id, r.span_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::int[], $11::text[], $12::timestamptz[],
            $13::timestamptz[], $14::text[], $15::uuid[], $16::boolean[], $17::text[], $18::text[],
            $19::text[], $20::text[])
     AS r(queue_name, job_id, function, args, kwargs, error_type, error_message, stack_trace,
          fingerprint, attempts, reason, enqueued_at, failed_at, correlation_id, retry_of,
          content_escaped, payload_omitted, raw_preview, trace_id, span_id)
LEFT JOIN dead_letter_queue AS previous ON previous.id = r.retry_of
ON CONFLICT (queue_name, job_id) DO NOTHING
RETURNING queue_name, job_id, id
"""

Pending = tuple["FailureRecord", "asyncio.Future[uuid.UUID | None]"]


def _columns(records: Sequence[FailureRecord]) -> list[list[Any]]:
    return [
        [r.queue for r in records],
        [r.job_id for r in records],
        [r.function for r in records],
        [orjson.dumps(r.args).decode() for r in records],
        [orjson.dumps(r.kwargs).decode() for r in records],
        [r.error_type for r in records],
        [r.error_message for r in records],
        [r.stack_trace for r in records],
        [r.fingerprint for r in records],
        [r.attempts for r in records],
        [r.reason for r in records],
        [r.enqueued_at for r in records],
        [r.failed_at for r in records],
        [r.correlation_id for r in records],
        [r.retry_of for r in records],
        [r.content_escaped for r in records],
        [r.payload_omitted for r in records],
        [r.raw_preview for r in records],
        [r.trace_id for r in records],
        [r.span_id for r in records],
    ]


INSERT_FAILURE = """
INSERT INTO dead_letter_queue (
    queue_name, job_id, function, args, kwargs, error_type, error_message, stack_trace,
    fingerprint, attempts, reason, enqueued_at, failed_at, correlation_id, retry_of,
    content_escaped, payload_omitted, raw_preview, trace_id, span_id
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
        (SELECT id FROM dead_letter_queue WHERE id = $15), $16, $17, $18, $19, $20)
ON CONFLICT (queue_name, job_id) DO NOTHING
RETURNING id
"""


async def insert_failure(conn: Conn, record: FailureRecord) -> uuid.UUID | None:
    """Insert one DLQ row; ``None`` when this (queue, job id) was already captured.

    ``retry_of`` is kept only if that entry still exists (it may have been pruned).
    """
    entry_id: uuid.UUID | None = await fetchval(
        conn,
        "dlq_insert",
        INSERT_FAILURE,
        record.queue,
        record.job_id,
        record.function,
        record.args,
        record.kwargs,
        record.error_type,
        record.error_message,
        record.stack_trace,
        record.fingerprint,
        record.attempts,
        record.reason,
        record.enqueued_at,
        record.failed_at,
        record.correlation_id,
        record.retry_of,
        record.content_escaped,
        record.payload_omitted,
        record.raw_preview,
        record.trace_id,
        record.span_id,
    )
    return entry_id


async def insert_failures(pool: Any, records: Sequence[FailureRecord]) -> dict[tuple[str, str], uuid.UUID]:
    """Insert rows in one statement; the ids of the rows this call stored, by (queue, job id).

    One row (the common case outside a storm) takes a plain VALUES insert: encoding seventeen
    one-element arrays for ``unnest`` cost more than the row itself.
    """
    async with pool.acquire(timeout=BATCH_TIMEOUT_SECONDS) as conn:
        if len(records) == 1:
            (record,) = records
            entry_id = await insert_failure(conn, record)
            return {(record.queue, record.job_id): entry_id} if entry_id is not None else {}
        rows = await fetch(conn, "dlq_insert_batch", INSERT_FAILURES, *_columns(records))
    return {(row["queue_name"], row["job_id"]): row["id"] for row in rows}


class GroupCommitter:
    """One per ``Database``: batches the captures of every job running in this process."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: list[Pending] = []
        self._writer: asyncio.Future[None] | None = None
        self.statements = 0  # INSERT statements issued, for tests and benchmarks
        self.rows_offered = 0
        self.lingered = 0  # batches that waited for company, for tests and benchmarks
        self._last_shared = float("-inf")  # loop time a write last showed concurrent captures

    async def store(self, record: FailureRecord) -> uuid.UUID | None:
        """The new row's id, or ``None`` when this (queue, job id) was already captured."""
        future: asyncio.Future[uuid.UUID | None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        return await future

    async def _write_all(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_shared < STORM_WINDOW_SECONDS:
            await self._linger()  # a storm: let the batch fill
        else:
            # one turn of the event loop: jobs failing in the same iteration join this batch, at
            # no added latency (nothing waits on a timer)
            await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await self._write(batch)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exc)
                    continue
                for pending in batch:  # isolate the record the database refuses
                    try:
                        await self._write([pending])
                    except Exception as row_exc:
                        _settle(pending[1], row_exc)
            if len(batch) > 1 or self._pending:
                self._last_shared = loop.time()
            if self._pending and len(self._pending) < MAX_BATCH:
                await self._linger()  # more arrived while writing: a storm

    async def _linger(self) -> None:
        self.lingered += 1
        await asyncio.sleep(STORM_LINGER_SECONDS)

    async def _write(self, batch: list[Pending]) -> None:
        first_of: dict[tuple[str, str], Pending] = {}
        for pending in batch:
            first_of.setdefault((pending[0].queue, pending[0].job_id), pending)
        unique = list(first_of.values())
        self.statements += 1
        self.rows_offered += len(unique)
        async with asyncio.timeout(BATCH_TIMEOUT_SECONDS):  # no task per batch, unlike wait_for
            stored = await insert_failures(self._db.pool, [record for record, _ in unique])
        for record, future in batch:
            key = (record.queue, record.job_id)
            # the first copy of a key gets the id; later copies (and known rows) are duplicates
            _settle(future, stored.get(key) if first_of[key][1] is future else None)


def _settle(future: asyncio.Future[uuid.UUID | None], outcome: uuid.UUID | BaseException | None) -> None:
    if future.done():  # the capturing job gave up waiting (timeout, cancellation)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


_committers: weakref.WeakKeyDictionary[Database, GroupCommitter] = weakref.WeakKeyDictionary()


def committer_for(db: Database) -> GroupCommitter:
    committer = _committers.get(db)
    if committer is None:
        committer = _committers[db] = GroupCommitter(db)
    return committer

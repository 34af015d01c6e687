"""Report exports: a provider's lead inbox as CSV, stored in ``report_exports``, then an email.

``export_report`` runs in three steps:

1. mark the export ``running`` (committed at once, so operators can see it is being worked on);
2. in one transaction holding the export row lock (two workers on the same export serialize), run
   the inbox query through a server-side cursor (``DECLARE``/``FETCH`` in batches, each through
   the timed ``shared.infra.db`` helpers) so a large inbox never sits in memory as rows, write the CSV,
   and store content, row count, ``done`` and ``completed_at``;
3. after COMMIT, enqueue the ``report_ready`` email (the provider and whether that email was sent
   are read before COMMIT, in step 2's transaction: after COMMIT only Redis is used, so a Postgres
   outage right after it cannot fail a try whose export is stored).

On failure the export is marked ``failed`` with the error type and the exception propagates (the
worker decides whether to retry; a retry starts again from step 1).

Idempotent: an export already ``done`` is not redone. Its result comes back with outcome
``already_done``, and the ``report_ready`` email is enqueued again only if the outbox has not sent
it yet (the process may have died between COMMIT and the enqueue; the deterministic job id and the
email idempotency key keep that from sending twice).

CSV cells that a spreadsheet would evaluate as a formula (text starting with ``= + - @``, tab or CR)
are prefixed with ``'``: lead sources and bad-lead reasons come from outside.
"""

from __future__ import annotations

import csv
import io
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

import orjson
from arq.connections import ArqRedis

from shared.email.outbox import enqueue_email, sent_idempotency_keys
from shared.infra.db import Conn, execute, fetch, fetchrow
from shared.infra.errors import NotFound
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.marketplace.providers import Provider, get_provider

FETCH_BATCH_ROWS: Final = 500
MAX_ERROR_MESSAGE_LENGTH: Final = 500
CSV_HEADER: Final = (
    "assignment_id",
    "lead_id",
    "assigned_at",
    "price",
    "status",
    "bad_reason",
    "refunded_at",
    "lead_source",
    "lead_created_at",
    "lead_payload",
)

ExportOutcome = Literal["exported", "already_done"]


@dataclass(frozen=True, slots=True)
class ExportResult:
    export_id: uuid.UUID
    provider_id: uuid.UUID
    row_count: int
    completed_at: datetime
    outcome: ExportOutcome


def report_ready_key(export_id: uuid.UUID) -> str:
    return f"report_ready:{export_id}"


MARK_RUNNING = """
UPDATE report_exports SET status = 'running', error_message = NULL
WHERE id = $1 AND status <> 'done'
RETURNING provider_id
"""

SELECT_EXPORT = """
SELECT id, provider_id, status, row_count, completed_at FROM report_exports WHERE id = $1
"""

MARK_FAILED = """
UPDATE report_exports SET status = 'failed', error_message = $2 WHERE id = $1 AND status <> 'done'
"""


async def export_report(pool: Any, redis: ArqRedis, metrics: Metrics, export_id: uuid.UUID) -> ExportResult:
    """Export the provider inbox of ``export_id`` once; see the module docstring. Unknown → ``NotFound``."""
    async with pool.acquire() as conn:
        running = await fetchrow(conn, "report_export_mark_running", MARK_RUNNING, export_id)
        if running is None:
            existing = await fetchrow(conn, "report_export_get", SELECT_EXPORT, export_id)
            if existing is None:
                raise NotFound(f"report export {export_id} does not exist")
            result = _result(existing, "already_done")
            provider, already_sent = await _notification(conn, result)
        else:
            try:
                result, provider, already_sent = await _export(conn, metrics, export_id)
            except Exception as exc:
                await _mark_failed(conn, export_id, exc)
                raise
    if not already_sent:
        await enqueue_email(
            redis,
            metrics,
            to=provider.email,
            template="report_ready",
            context=_email_context(export_id, provider, result.row_count),
            idempotency_key=report_ready_key(export_id),
        )
    log_event(
        "INFO",
        "report_exported",
        export_id=str(export_id),
        provider_id=str(result.provider_id),
        row_count=result.row_count,
        outcome=result.outcome,
    )
    return result


async def _notification(conn: Conn, result: ExportResult) -> tuple[Provider, bool]:
    """The provider to email and whether its ``report_ready`` email was already sent."""
    provider = await get_provider(conn, result.provider_id)
    sent = await sent_idempotency_keys(conn, [report_ready_key(result.export_id)])
    return provider, bool(sent)


def _result(row: Any, outcome: ExportOutcome) -> ExportResult:
    return ExportResult(row["id"], row["provider_id"], row["row_count"], row["completed_at"], outcome)


def _email_context(export_id: uuid.UUID, provider: Provider, row_count: int) -> dict[str, str | int]:
    return {"provider_name": provider.name, "export_id": str(export_id), "row_count": row_count}


async def _mark_failed(conn: Conn, export_id: uuid.UUID, exc: Exception) -> None:
    message = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_MESSAGE_LENGTH]
    log_event("ERROR", "report_export_failed", export_id=str(export_id), error_type=type(exc).__name__)
    try:
        await execute(conn, "report_export_mark_failed", MARK_FAILED, export_id, message)
    except Exception as mark_exc:  # the original error matters more; never mask it
        log_event(
            "WARNING",
            "report_export_mark_failed_error",
            export_id=str(export_id),
            error_type=type(mark_exc).__name__,
        )


LOCK_EXPORT = """
SELECT id, provider_id, status, row_count, completed_at FROM report_exports WHERE id = $1 FOR UPDATE
"""

# The provider inbox, newest first (lead_assignments_provider_time_idx). A cursor of our own
# transaction: closed by COMMIT/ROLLBACK at the latest.
DECLARE_INBOX_CURSOR = """
DECLARE inbox_export NO SCROLL CURSOR FOR
SELECT a.id, a.lead_id, a.created_at, a.price, a.status, a.bad_reason, a.refunded_at,
       l.source, l.created_at AS lead_created_at, l.payload
FROM lead_assignments a
JOIN leads l ON l.id = a.lead_id
WHERE a.provider_id = $1
ORDER BY a.created_at DESC, a.id DESC
"""

FETCH_INBOX = f"FETCH FORWARD {FETCH_BATCH_ROWS} FROM inbox_export"

CLOSE_INBOX_CURSOR = "CLOSE inbox_export"

STORE_EXPORT = """
UPDATE report_exports
SET status = 'done', content = $2, row_count = $3, completed_at = now(), error_message = NULL
WHERE id = $1
RETURNING id, provider_id, status, row_count, completed_at
"""


async def _export(conn: Conn, metrics: Metrics, export_id: uuid.UUID) -> tuple[ExportResult, Provider, bool]:
    """The export, the provider to email and whether it was emailed already, all read in the
    transaction that stores the export: nothing touches Postgres after COMMIT, so a Postgres
    outage right after it (behind PgBouncer, every statement after COMMIT needs a server
    connection again) cannot fail a try whose export is already stored, leaving it ``done``
    and in the DLQ as ``exhausted`` (seen in the chaos test through PgBouncer)."""
    async with conn.transaction():
        export = await fetchrow(conn, "report_export_lock", LOCK_EXPORT, export_id)
        if export["status"] == "done":  # another worker finished it while we waited for the lock
            done = _result(export, "already_done")
            return (done, *await _notification(conn, done))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        row_count = 0
        query_seconds = 0.0
        started = time.perf_counter()
        await execute(conn, "inbox_cursor_declare", DECLARE_INBOX_CURSOR, export["provider_id"])
        query_seconds += time.perf_counter() - started
        while True:
            started = time.perf_counter()
            batch = await fetch(conn, "inbox_cursor_fetch", FETCH_INBOX)
            query_seconds += time.perf_counter() - started
            writer.writerows(_csv_row(row) for row in batch)
            row_count += len(batch)
            if len(batch) < FETCH_BATCH_ROWS:
                break
        await execute(conn, "inbox_cursor_close", CLOSE_INBOX_CURSOR)
        # Time spent in Postgres only, not in CSV formatting: this feeds InboxQuerySlow.
        metrics.observe(metrics.inbox_query_duration_seconds, query_seconds)
        stored = await fetchrow(
            conn, "report_export_store", STORE_EXPORT, export_id, buffer.getvalue(), row_count
        )
        result = _result(stored, "exported")
        provider, already_sent = await _notification(conn, result)
    return result, provider, already_sent


def _csv_row(row: Any) -> tuple[str, ...]:
    return (
        str(row["id"]),
        str(row["lead_id"]),
        _iso(row["created_at"]),
        _money(row["price"]),
        row["status"],
        _text(row["bad_reason"]),
        _iso(row["refunded_at"]),
        _text(row["source"]),
        _iso(row["lead_created_at"]),
        _text(orjson.dumps(row["payload"], option=orjson.OPT_SORT_KEYS).decode()),
    )


def _iso(value: datetime | None) -> str:
    return "" if value is None else value.isoformat()


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def _text(value: str | None) -> str:
    if value is None:
        return ""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

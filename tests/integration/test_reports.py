"""export_report over real Postgres and Redis: CSV of the provider inbox, once, then an email job."""

from __future__ import annotations

import csv
import dataclasses
import io
import uuid
from decimal import Decimal
from typing import Any

import pytest
from arq.connections import ArqRedis

from shared.infra.config import Settings
from shared.infra.db import create_pool
from shared.infra.errors import NotFound
from shared.infra.metrics import Metrics
from shared.infra.redis import deserialize_job
from shared.jobs.queues import EMAIL_SEND
from shared.marketplace.reports import CSV_HEADER, FETCH_BATCH_ROWS, export_report
from tests.factories import create_assignment, create_lead, create_provider, create_report_export


def parse_csv(content: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content)))


def inbox_query_count(metrics: Metrics) -> float:
    histogram: Any = metrics.inbox_query_duration_seconds
    try:
        return float(histogram.get({})["count"])
    except KeyError:
        return 0.0


async def test_export_writes_the_inbox_newest_first_and_enqueues_report_ready(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    provider_id = await create_provider(
        clean_db, name="Acme", email="acme@example.test", balance=Decimal("500")
    )
    other_id = await create_provider(clean_db)
    assignments = []
    for n in range(3):
        lead_id = await create_lead(
            clean_db, source=f"src-{n}", payload={"name": f"Lead {n}", "zip": "10001"}
        )
        assignments.append(await create_assignment(clean_db, lead_id, provider_id))
        await clean_db.execute(
            "UPDATE lead_assignments SET created_at = now() - make_interval(mins => $2) WHERE id = $1",
            assignments[-1],
            10 - n,  # the last one is the newest
        )
    await create_assignment(clean_db, await create_lead(clean_db), other_id)  # not in Acme's inbox
    export_id = await create_report_export(clean_db, provider_id)

    result = await export_report(clean_db, redis, metrics, export_id)

    assert (result.export_id, result.provider_id, result.row_count, result.outcome) == (
        export_id,
        provider_id,
        3,
        "exported",
    )
    row = await clean_db.fetchrow("SELECT * FROM report_exports WHERE id = $1", export_id)
    assert (row["status"], row["row_count"]) == ("done", 3)
    assert row["completed_at"] == result.completed_at
    rows = parse_csv(row["content"])
    assert rows[0] == list(CSV_HEADER)
    assert [r[0] for r in rows[1:]] == [str(a) for a in reversed(assignments)]
    newest = dict(zip(CSV_HEADER, rows[1], strict=True))
    assert newest["price"] == "10.00"
    assert newest["status"] == "assigned"
    assert newest["lead_source"] == "src-2"
    assert newest["lead_payload"] == '{"name":"Lead 2","zip":"10001"}'
    assert newest["refunded_at"] == ""
    assert inbox_query_count(metrics) == 1

    job_ids = [j.decode() for j in await redis.zrange(EMAIL_SEND, 0, -1)]
    assert job_ids == [f"email:report_ready:{export_id}"]
    payload = await redis.get(f"arq:job:email:report_ready:{export_id}")
    assert payload is not None
    job = deserialize_job(payload)
    assert job["f"] == "send_email"
    assert job["k"]["to"] == "acme@example.test"
    assert job["k"]["template"] == "report_ready"
    assert job["k"]["idempotency_key"] == f"report_ready:{export_id}"
    assert job["k"]["context"] == {"provider_name": "Acme", "export_id": str(export_id), "row_count": 3}


async def test_second_export_call_returns_the_stored_result_without_redoing_it(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    provider_id = await create_provider(clean_db)
    await create_assignment(clean_db, await create_lead(clean_db), provider_id)
    export_id = await create_report_export(clean_db, provider_id)

    first = await export_report(clean_db, redis, metrics, export_id)
    content = await clean_db.fetchval("SELECT content FROM report_exports WHERE id = $1", export_id)
    await create_assignment(clean_db, await create_lead(clean_db), provider_id)  # would change a redo
    second = await export_report(clean_db, redis, metrics, export_id)

    assert (first.outcome, second.outcome) == ("exported", "already_done")
    assert (
        (second.row_count, second.completed_at)
        == (first.row_count, first.completed_at)
        == (1, first.completed_at)
    )
    assert await clean_db.fetchval("SELECT content FROM report_exports WHERE id = $1", export_id) == content
    assert inbox_query_count(metrics) == 1
    assert await redis.zcard(EMAIL_SEND) == 1
    assert metrics.queue_jobs_enqueued_total.get({"queue": EMAIL_SEND}) == 1


async def test_done_export_whose_email_was_sent_enqueues_nothing(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    provider_id = await create_provider(clean_db)
    export_id = await create_report_export(clean_db, provider_id)
    await export_report(clean_db, redis, metrics, export_id)
    await redis.flushdb()
    await clean_db.execute(
        """INSERT INTO email_outbox
               (idempotency_key, to_address, template, subject, body, backend, status, sent_at)
           VALUES ($1, 'x@example.test', 'report_ready', 's', 'b', 'log', 'sent', now())""",
        f"report_ready:{export_id}",
    )

    again = await export_report(clean_db, redis, metrics, export_id)

    assert again.outcome == "already_done" and again.row_count == 0
    assert await redis.zcard(EMAIL_SEND) == 0


async def test_large_inbox_is_streamed_in_batches(clean_db: Any, redis: ArqRedis, metrics: Metrics) -> None:
    provider_id = await create_provider(clean_db, balance=Decimal("100000.00"))
    total = FETCH_BATCH_ROWS * 2 + 7
    await clean_db.execute(
        """WITH new_leads AS (
               INSERT INTO leads (source, status)
               SELECT 'bulk', 'distributed' FROM generate_series(1, $2::int)
               RETURNING id)
           INSERT INTO lead_assignments (lead_id, provider_id, price) SELECT id, $1, 10 FROM new_leads""",
        provider_id,
        total,
    )
    export_id = await create_report_export(clean_db, provider_id)

    result = await export_report(clean_db, redis, metrics, export_id)

    assert result.row_count == total
    content = await clean_db.fetchval("SELECT content FROM report_exports WHERE id = $1", export_id)
    rows = parse_csv(content)
    assert len(rows) == total + 1
    assert len({r[0] for r in rows[1:]}) == total


async def test_formula_like_cells_are_neutralised(clean_db: Any, redis: ArqRedis, metrics: Metrics) -> None:
    provider_id = await create_provider(clean_db)
    await create_assignment(clean_db, await create_lead(clean_db, source='=HYPERLINK("x")'), provider_id)
    export_id = await create_report_export(clean_db, provider_id)

    await export_report(clean_db, redis, metrics, export_id)

    content = await clean_db.fetchval("SELECT content FROM report_exports WHERE id = $1", export_id)
    row = dict(zip(CSV_HEADER, parse_csv(content)[1], strict=True))
    assert row["lead_source"] == '\'=HYPERLINK("x")'


async def test_failed_export_is_retried_from_the_start(
    clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    provider_id = await create_provider(clean_db)
    await create_assignment(clean_db, await create_lead(clean_db), provider_id)
    export_id = await create_report_export(clean_db, provider_id, status="failed")

    result = await export_report(clean_db, redis, metrics, export_id)

    assert (result.outcome, result.row_count) == ("exported", 1)
    row = await clean_db.fetchrow("SELECT status, error_message FROM report_exports WHERE id = $1", export_id)
    assert (row["status"], row["error_message"]) == ("done", None)


async def test_unknown_export_is_not_found(clean_db: Any, redis: ArqRedis, metrics: Metrics) -> None:
    with pytest.raises(NotFound):
        await export_report(clean_db, redis, metrics, uuid.uuid4())
    assert await redis.zcard(EMAIL_SEND) == 0


async def test_failure_marks_the_export_failed_and_sends_nothing(
    clean_db: Any, redis: ArqRedis, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_id = await create_provider(clean_db)
    await create_assignment(clean_db, await create_lead(clean_db), provider_id)
    export_id = await create_report_export(clean_db, provider_id)

    def broken_row(row: Any) -> tuple[str, ...]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("shared.marketplace.reports._csv_row", broken_row)
    with pytest.raises(RuntimeError):
        await export_report(clean_db, redis, metrics, export_id)

    row = await clean_db.fetchrow(
        "SELECT status, error_message, content FROM report_exports WHERE id = $1", export_id
    )
    assert (row["status"], row["error_message"], row["content"]) == (
        "failed",
        "RuntimeError: disk on fire",
        None,
    )
    assert await redis.zcard(EMAIL_SEND) == 0


async def test_nothing_touches_postgres_after_the_export_commits(
    settings: Settings, clean_db: Any, redis: ArqRedis, metrics: Metrics
) -> None:
    """The provider and the sent-email check are read inside the export's transaction: a Postgres
    outage right after COMMIT (behind PgBouncer every statement after it needs a server connection
    again) once failed every try of an export already stored, which ended ``done`` *and* in the
    DLQ as ``exhausted`` (chaos test through PgBouncer)."""
    provider_id = await create_provider(clean_db)
    await create_assignment(clean_db, await create_lead(clean_db), provider_id)
    export_id = await create_report_export(clean_db, provider_id)
    pool = await create_pool(
        dataclasses.replace(settings, db_pool_min_size=1, db_pool_max_size=1), application_name="one"
    )
    statements: list[str] = []
    try:
        async with pool.acquire() as conn:  # the pool's one connection: export_report gets it too
            conn.add_query_logger(lambda logged: statements.append(logged.query.strip()))
        result = await export_report(pool, redis, metrics, export_id)
    finally:
        await pool.close()
    assert result.outcome == "exported"
    commits = [n for n, sql in enumerate(statements) if sql.upper().startswith("COMMIT")]
    assert commits, statements
    assert statements[commits[-1] + 1 :] == [], statements

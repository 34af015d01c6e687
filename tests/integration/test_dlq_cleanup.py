"""cleanup_dlq: only resolved entries past retention, in batches that never block captures."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from shared.dlq.cleanup import cleanup_dlq
from tests.factories import bulk_create_dlq_entries, create_dlq_entry

BULK = 50_000
RETENTION_DAYS = 30

COUNT_BY_SET = """
SELECT count(*) FILTER (WHERE job_id LIKE 'resolved-old-%') AS resolved_old,
       count(*) FILTER (WHERE job_id LIKE 'resolved-recent-%') AS resolved_recent,
       count(*) FILTER (WHERE job_id LIKE 'unresolved-old-%') AS unresolved_old,
       count(*) FILTER (WHERE resolved_at IS NULL) AS unresolved
FROM dead_letter_queue
"""


@pytest.mark.serial  # inserts during the cleanup must each take under 1 s
async def test_deletes_only_resolved_past_retention_without_blocking_inserts(clean_db: Any) -> None:
    async with clean_db.acquire() as conn:
        now = await conn.fetchval("SELECT now()")
        old, recent = now - timedelta(days=45), now - timedelta(days=1)
        await bulk_create_dlq_entries(conn, BULK, job_prefix="resolved-old", failed_at=old, resolved_at=old)
        # Failed long ago but resolved yesterday: retention counts from the resolution.
        await bulk_create_dlq_entries(
            conn, BULK, job_prefix="resolved-recent", failed_at=old, resolved_at=recent
        )
        await bulk_create_dlq_entries(
            conn, BULK, job_prefix="unresolved-old", failed_at=now - timedelta(days=400)
        )
        retention = timedelta(days=RETENTION_DAYS)
        just_past = await create_dlq_entry(conn, resolved_at=now - retention - timedelta(minutes=5))
        just_within = await create_dlq_entry(conn, resolved_at=now - retention + timedelta(minutes=5))
        # A retried entry resolved long ago, and the newer failure of its retry pointing back at it.
        retried = await create_dlq_entry(
            conn,
            queue_name="distribute_lead",
            function="distribute_lead",
            resolved_at=old,
            resolution="retried",
        )
        newer = await create_dlq_entry(
            conn,
            queue_name="distribute_lead",
            function="distribute_lead",
            args=["lead-1"],
            error_type="DeadlockDetectedError",
            retry_of=retried,
        )
        await conn.execute("ANALYZE dead_letter_queue")

    cleanup = asyncio.create_task(cleanup_dlq(clean_db, retention_days=RETENTION_DAYS))
    latencies: list[float] = []
    async with clean_db.acquire() as conn:
        while not cleanup.done():
            started = time.perf_counter()
            await create_dlq_entry(conn, queue_name="report_export", function="export_report")
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
    result = await cleanup

    # Acceptance criterion: a capture issued during cleanup completes in under a second.
    assert len(latencies) >= 3, "the inserts did not overlap the cleanup"
    assert max(latencies) < 1.0, f"an insert waited {max(latencies):.3f}s during cleanup"

    assert result.deleted == BULK + 2  # + just_past + retried
    assert result.batches == 11  # ceil(50_002 / 5_000)
    async with clean_db.acquire() as conn:
        counts = await conn.fetchrow(COUNT_BY_SET)
        ids = {row["id"] for row in await conn.fetch("SELECT id FROM dead_letter_queue")}
        newer_row = await conn.fetchrow("SELECT * FROM dead_letter_queue WHERE id = $1", newer)
        pruned = await conn.fetch(
            "SELECT actor, metadata FROM audit_log"
            " WHERE action = 'dlq.pruned' AND target_type = 'dead_letter_queue'"
        )
    assert counts["resolved_old"] == 0
    assert counts["resolved_recent"] == BULK
    assert counts["unresolved_old"] == BULK
    assert counts["unresolved"] == BULK + 1 + len(latencies), "no unresolved entry is ever deleted"
    assert just_past not in ids and retried not in ids
    assert just_within in ids
    # ON DELETE SET NULL: the newer entry loses only the link; its own payload and history stay.
    assert newer_row["retry_of"] is None
    assert (newer_row["args"], newer_row["error_type"]) == (["lead-1"], "DeadlockDetectedError")
    assert len(pruned) == result.batches
    assert sum(row["metadata"]["deleted"] for row in pruned) == result.deleted
    assert {row["actor"] for row in pruned} == {"system:cron"}

    # Nothing left to prune: a second run is a no-op.
    again = await cleanup_dlq(clean_db, retention_days=RETENTION_DAYS)
    assert (again.deleted, again.batches) == (0, 0)


async def test_small_batches_and_exact_multiple(clean_db: Any) -> None:
    async with clean_db.acquire() as conn:
        old = await conn.fetchval("SELECT now() - interval '90 days'")
        await bulk_create_dlq_entries(conn, 10, job_prefix="resolved-old", failed_at=old, resolved_at=old)
        await bulk_create_dlq_entries(conn, 3, job_prefix="unresolved-old", failed_at=old)
    result = await cleanup_dlq(clean_db, retention_days=RETENTION_DAYS, batch_size=5)
    assert (result.deleted, result.batches) == (10, 2)
    async with clean_db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dead_letter_queue") == 3


@pytest.mark.parametrize(("retention_days", "batch_size"), [(-1, 10), (30, 0)])
async def test_rejects_nonsense_arguments(clean_db: Any, retention_days: int, batch_size: int) -> None:
    with pytest.raises(ValueError):
        await cleanup_dlq(clean_db, retention_days=retention_days, batch_size=batch_size)

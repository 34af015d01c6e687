"""The dlq_groups counters (sql/002) equal a full GROUP BY after any mix of writes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.dlq.browse import group_entries
from tests.factories import bulk_create_dlq_entries, create_dlq_entry

TRUTH = """
SELECT fingerprint, queue_name, function, error_type,
       count(*) FILTER (WHERE resolved_at IS NULL) AS unresolved,
       count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved,
       max(failed_at) AS last_failed_at
FROM dead_letter_queue GROUP BY 1, 2, 3, 4
"""
COUNTERS = """
SELECT fingerprint, queue_name, function, error_type, unresolved_count AS unresolved,
       resolved_count AS resolved, last_failed_at
FROM dlq_groups
"""


async def _as_map(conn: Any, sql: str) -> dict[tuple[str, ...], tuple[int, int]]:
    rows = await conn.fetch(sql)
    return {
        (r["fingerprint"], r["queue_name"], r["function"], r["error_type"]): (r["unresolved"], r["resolved"])
        for r in rows
    }


async def test_counters_follow_inserts_resolves_retries_and_deletes(conn: Any) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    queues = ("email_send", "distribute_lead", "report_export")
    for n in range(300):
        await create_dlq_entry(
            conn,
            queue_name=rng.choice(queues),
            fingerprint=f"fp-{rng.randrange(12)}",
            error_type=rng.choice(("ValueError", "KeyError")),
            error_message=f"boom {n}",
            failed_at=now - timedelta(minutes=rng.randrange(10_000)),
            resolved_at=now if rng.random() < 0.3 else None,
        )
    await bulk_create_dlq_entries(conn, 500, job_prefix="bulk", failed_at=now - timedelta(days=40))
    assert await _as_map(conn, COUNTERS) == await _as_map(conn, TRUTH)

    # resolve a random third (one statement), retry some (resolution retried), un-resolve none
    await conn.execute(
        """UPDATE dead_letter_queue SET resolved_at = now(), resolution = 'manual', resolved_by = 't'
           WHERE resolved_at IS NULL AND abs(hashtext(job_id)) % 3 = 0"""
    )
    await conn.execute(
        """UPDATE dead_letter_queue SET resolved_at = now(), resolution = 'retried', resolved_by = 't',
                  retry_job_id = 'r-' || id
           WHERE resolved_at IS NULL AND fingerprint = 'fp-3'"""
    )
    await conn.execute("UPDATE dead_letter_queue SET attempts = attempts + 1")  # no state change
    assert await _as_map(conn, COUNTERS) == await _as_map(conn, TRUTH)

    # cleanup-style delete of old resolved rows, and a delete that empties whole groups
    await conn.execute(
        "UPDATE dead_letter_queue SET resolved_at = now(), resolution = 'manual', "
        "resolved_by = 't' WHERE fingerprint = 'fp-bulk'"
    )
    await conn.execute("DELETE FROM dead_letter_queue WHERE fingerprint IN ('fp-bulk', 'fp-5')")
    await conn.execute("DELETE FROM dead_letter_queue WHERE resolved_at IS NOT NULL AND random() < 0.5")
    counters, truth = await _as_map(conn, COUNTERS), await _as_map(conn, TRUTH)
    assert counters == truth
    assert not any(key[0] in ("fp-bulk", "fp-5") for key in counters), "emptied groups are deleted"

    await conn.execute("TRUNCATE dead_letter_queue CASCADE")
    assert await conn.fetchval("SELECT count(*) FROM dlq_groups") == 0


async def test_groups_api_counts_by_state_and_keeps_first_and_last_seen(conn: Any) -> None:
    now = datetime.now(UTC)
    first, last = now - timedelta(hours=5), now - timedelta(minutes=1)
    await create_dlq_entry(conn, fingerprint="fp-a", failed_at=first, error_message="old")
    await create_dlq_entry(conn, fingerprint="fp-a", failed_at=last, error_message="newest")
    await create_dlq_entry(conn, fingerprint="fp-a", failed_at=now - timedelta(hours=1), resolved_at=now)
    await create_dlq_entry(conn, fingerprint="fp-b", failed_at=now, resolved_at=now)

    (unresolved,) = await group_entries(conn, queue=None, resolved=False)
    assert (unresolved.fingerprint, unresolved.count) == ("fp-a", 2)
    assert unresolved.sample_message == "newest"
    assert (unresolved.first_failed_at, unresolved.last_failed_at) == (first, last)
    resolved = {g.fingerprint: g.count for g in await group_entries(conn, queue=None, resolved=True)}
    assert resolved == {"fp-a": 1, "fp-b": 1}
    everything = {g.fingerprint: g.count for g in await group_entries(conn, queue=None, resolved=None)}
    assert everything == {"fp-a": 3, "fp-b": 1}
    assert await group_entries(conn, queue="report_export", resolved=None) == []

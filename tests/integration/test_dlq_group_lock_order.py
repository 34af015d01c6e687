"""Cleanup deleting across many groups while captures insert into them never deadlocks (sql/004)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

SEED = """
INSERT INTO dead_letter_queue (queue_name, job_id, function, error_type, error_message, fingerprint,
                               attempts, reason, failed_at, resolved_at, resolved_by, resolution)
SELECT 'email_send', 'old-' || g, 'send_email', 'E', 'm', 'fp-' || (g % 300), 1, 'permanent',
       now() - interval '60 days', now() - interval '59 days', 't', 'manual'
FROM generate_series(1, 30000) AS g
"""
INSERT = """
INSERT INTO dead_letter_queue (queue_name, job_id, function, error_type, error_message, fingerprint,
                               attempts, reason, failed_at)
SELECT 'email_send', $1 || '-' || g, 'send_email', 'E', 'm', 'fp-' || ((g * 7919 + $2) % 300), 1,
       'permanent', now()
FROM generate_series(1, 20) AS g
"""
# newest first: the delete visits the groups in an order unrelated to their keys
DELETE_BATCH = """
DELETE FROM dead_letter_queue WHERE id IN (
    SELECT id FROM dead_letter_queue WHERE resolved_at IS NOT NULL
    ORDER BY md5(id::text) LIMIT 3000)
"""


async def test_cleanup_and_captures_share_groups_without_deadlock(clean_db: Any) -> None:
    await clean_db.execute(SEED)
    errors: list[BaseException] = []
    latencies: list[float] = []

    async def capture_storm(worker: int) -> None:
        rng = random.Random(worker)
        for n in range(40):
            started = time.perf_counter()
            try:
                await clean_db.execute(INSERT, f"w{worker}-{n}", rng.randrange(300))
            except Exception as exc:  # collect: the assertion below names them
                errors.append(exc)
            latencies.append(time.perf_counter() - started)

    async def cleanup() -> None:
        while True:
            try:
                status = await clean_db.execute(DELETE_BATCH)
            except Exception as exc:
                errors.append(exc)
                return
            if status == "DELETE 0":
                return

    await asyncio.gather(cleanup(), *(capture_storm(w) for w in range(6)))
    print(f"\n240 concurrent capture batches during cleanup: max {max(latencies) * 1000:.0f} ms")
    assert errors == []
    left = await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE resolved_at IS NOT NULL")
    assert left == 0
    counts = await clean_db.fetchval("SELECT sum(unresolved_count) FROM dlq_groups")
    assert counts == 240 * 20

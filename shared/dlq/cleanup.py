"""Prune resolved dead-letter entries past retention (cron ``cleanup_dlq``).

Only entries with ``resolved_at`` set and older than ``retention_days`` are deleted; an unresolved
entry is never deleted, whatever its age (it is work a human still owes). The cutoff is read once
from the database clock at the start, so every batch agrees on it and the loop ends.

Batches: ``DELETE ... WHERE id IN (SELECT id ... LIMIT n FOR UPDATE SKIP LOCKED)``, each in its
own short transaction. Captures keep inserting during a cleanup: a delete takes only row locks, so
an insert is never blocked, and short transactions keep vacuum and replication lag small. ``SKIP
LOCKED`` steps over a row someone is touching right now (it is pruned next time). A batch that
deletes fewer than ``batch_size`` rows means nothing eligible is left.

``retry_of``: an entry created when a retried job failed again points back at the entry it was
retried from, with ``ON DELETE SET NULL`` (001_initial.sql). Pruning the old resolved entry sets
that pointer to NULL; the newer entry keeps its own payload, error, stack trace and attempts, so
nothing it needs is lost (the link is history, and the old entry was resolved long ago).

Audit: one ``dlq.pruned`` row per batch, in the batch's transaction, with its count and cutoff.
Not one per deleted entry: that would move the DLQ's volume into ``audit_log`` and defeat the
retention this job exists for. The run's own audit row (written by the cron wrapper) has the totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import audit
from shared.infra.db import fetchval
from shared.infra.logs import log_event

ACTOR = "system:cron"

SELECT_CUTOFF = "SELECT now() - make_interval(days => $1)"

DELETE_RESOLVED_BATCH = """
WITH pruned AS (
    DELETE FROM dead_letter_queue
    WHERE id IN (
        SELECT id
        FROM dead_letter_queue
        WHERE resolved_at IS NOT NULL AND resolved_at < $1
        ORDER BY resolved_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
SELECT count(*) FROM pruned
"""


@dataclass(frozen=True, slots=True)
class CleanupResult:
    deleted: int
    batches: int


async def cleanup_dlq(pool: Any, *, retention_days: int, batch_size: int = 5000) -> CleanupResult:
    """Delete resolved entries older than ``retention_days``, ``batch_size`` rows per transaction."""
    if retention_days < 0 or batch_size <= 0:
        raise ValueError("retention_days must be >= 0 and batch_size > 0")
    async with pool.acquire() as conn:
        cutoff: datetime = await fetchval(conn, "dlq_cleanup_cutoff", SELECT_CUTOFF, retention_days)
    deleted = batches = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            count: int = await fetchval(
                conn, "dlq_cleanup_delete_batch", DELETE_RESOLVED_BATCH, cutoff, batch_size
            )
            if count:
                await audit.record(
                    conn,
                    actor=ACTOR,
                    action="dlq.pruned",
                    target_type="dead_letter_queue",
                    metadata={
                        "deleted": count,
                        "cutoff": cutoff.isoformat(),
                        "retention_days": retention_days,
                    },
                )
        if count:
            deleted += count
            batches += 1
        if count < batch_size:
            break
    log_event(
        "INFO",
        "dlq_cleaned",
        deleted=deleted,
        batches=batches,
        cutoff=cutoff.isoformat(),
        retention_days=retention_days,
    )
    return CleanupResult(deleted=deleted, batches=batches)

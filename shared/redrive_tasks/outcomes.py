"""Counting what became of each sent job, and the breaker.

Exact, from two facts the system already keeps:
- failed again: a DLQ row whose ``retry_of`` is the item's entry (capture writes it exactly once),
  or arq's result for the job id ``dlq-retry:<entry id>`` saying ``success: false`` (the row may
  still be in the capture spool);
- succeeded: arq's result for that job id saying ``success: true`` (workers keep results 1 h).
Anything else is still pending (queued, deferred for a retry, running).

Then, in the same fenced transaction, the breaker: once ``breaker_min_outcomes`` outcomes are in
(counted since the last resume after a trip) and the share failing again reaches
``breaker_threshold``, the task trips: state ``tripped`` with the reason, audited, logged
(``redrive_tripped``), counted (``fmhl_redrive_tripped_total``); nothing more is sent. A running
task with nothing left to send and nothing in flight completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import result_key_prefix

from shared import audit
from shared.infra.db import Conn, execute, fetch, fetchrow
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.infra.redis import deserialize_job
from shared.redrive_tasks.lease import FENCE, Lease, fence_args
from shared.redrive_tasks.model import TASK_COLUMNS, RedriveTask

MAX_CHECKED = 500  # oldest in-flight items checked per round (4 rounds a second)

IN_FLIGHT = """
SELECT seq, dlq_entry_id, retry_job_id, queue_name FROM redrive_task_items
WHERE task_id = $1 AND state = 'sent' ORDER BY seq LIMIT $2
"""
FAILED_AGAIN = "SELECT retry_of FROM dead_letter_queue WHERE retry_of = ANY($1::uuid[])"
MARK_OUTCOME = """
UPDATE redrive_task_items AS i SET state = o.state, outcome_at = now()
FROM unnest($2::int[], $3::text[]) AS o(seq, state)
WHERE i.task_id = $1 AND i.seq = o.seq AND i.state = 'sent'
"""
COUNT_OUTCOMES = f"""
UPDATE redrive_tasks SET succeeded = succeeded + $4, failed_again = failed_again + $5,
    lease_until = now() + make_interval(secs => $6), updated_at = now()
WHERE {FENCE}
RETURNING {TASK_COLUMNS}, breaker_base_succeeded, breaker_base_failed
"""
TRIP = f"""
UPDATE redrive_tasks SET state = 'tripped', state_reason = $4, updated_at = now()
WHERE {FENCE} AND state = 'running'
"""
COMPLETE = f"""
UPDATE redrive_tasks SET state = 'completed', state_reason = NULL, finished_at = now(), updated_at = now()
WHERE {FENCE} AND state = 'running' AND sent + skipped = total AND succeeded + failed_again = sent
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The task after this round (``None`` from ``collect``: the lease is lost)."""

    task: RedriveTask
    tripped: bool = False
    completed: bool = False


def breaker_reason(task: RedriveTask, base_succeeded: int, base_failed: int) -> str | None:
    """The trip reason, or None while the breaker holds."""
    failed = task.failed_again - base_failed
    outcomes = failed + task.succeeded - base_succeeded
    if outcomes < task.breaker_min_outcomes or failed < task.breaker_threshold * outcomes:
        return None
    return (
        f"{failed} of the last {outcomes} outcomes failed again "
        f"({failed / outcomes:.0%} >= {task.breaker_threshold:.0%}); nothing more is sent"
    )


async def _outcomes(conn: Conn, redis: ArqRedis, lease: Lease) -> tuple[list[Any], dict[int, str]]:
    items = await fetch(conn, "redrive_in_flight", IN_FLIGHT, lease.task_id, MAX_CHECKED)
    if not items:
        return items, {}
    failed_rows = await fetch(conn, "redrive_failed_again", FAILED_AGAIN, [i["dlq_entry_id"] for i in items])
    failed = {r["retry_of"] for r in failed_rows}
    results = await redis.mget([result_key_prefix + i["retry_job_id"] for i in items])
    outcomes: dict[int, str] = {}
    for item, raw in zip(items, results, strict=True):
        if item["dlq_entry_id"] in failed:
            outcomes[item["seq"]] = "failed_again"
        elif raw:
            outcomes[item["seq"]] = "succeeded" if deserialize_job(raw).get("s") else "failed_again"
    return items, outcomes


async def collect(pool: Any, redis: ArqRedis, metrics: Metrics | None, lease: Lease) -> Snapshot | None:
    """Record the outcomes in, renew the lease, apply the breaker and completion."""
    async with pool.acquire() as conn:
        items, outcomes = await _outcomes(conn, redis, lease)
        queue_of = {i["seq"]: i["queue_name"] for i in items}
        async with conn.transaction():
            seqs = list(outcomes)
            states = [outcomes[s] for s in seqs]
            succeeded = states.count("succeeded")
            row = await fetchrow(
                conn,
                "redrive_count_outcomes",
                COUNT_OUTCOMES,
                *fence_args(lease),
                succeeded,
                len(states) - succeeded,
                lease.seconds,
            )
            if row is None:
                return None
            if seqs:
                await execute(conn, "redrive_mark_outcome", MARK_OUTCOME, lease.task_id, seqs, states)
            task = RedriveTask.from_row(row)
            snapshot = Snapshot(task)
            reason = breaker_reason(task, row["breaker_base_succeeded"], row["breaker_base_failed"])
            if task.state == "running" and reason is not None:
                await execute(conn, "redrive_trip", TRIP, *fence_args(lease), reason)
                await audit.record(
                    conn,
                    actor=f"redrive:{task.id}",
                    action="redrive.tripped",
                    target_type="redrive_task",
                    target_id=str(task.id),
                    metadata={"reason": reason, "sent": task.sent, "failed_again": task.failed_again},
                )
                snapshot = Snapshot(task, tripped=True)
            elif task.state == "running":
                status = await execute(conn, "redrive_complete", COMPLETE, *fence_args(lease))
                if status.endswith(" 1"):
                    await audit.record(
                        conn,
                        actor=f"redrive:{task.id}",
                        action="redrive.completed",
                        target_type="redrive_task",
                        target_id=str(task.id),
                        metadata={"succeeded": task.succeeded, "failed_again": task.failed_again},
                    )
                    snapshot = Snapshot(task, completed=True)
    if metrics is not None:
        for seq, state in outcomes.items():
            metrics.inc(metrics.redrive_jobs_total, {"queue": queue_of[seq], "outcome": state})
    if snapshot.tripped:
        queues = sorted(set(queue_of.values()))
        log_event("ERROR", "redrive_tripped", task_id=str(task.id), reason=reason, queues=queues)
        if metrics is not None:
            for queue in queues or ["unknown"]:
                metrics.inc(metrics.redrive_tripped_total, {"queue": queue})
    if snapshot.completed:
        log_event("INFO", "redrive_completed", task_id=str(task.id), succeeded=task.succeeded,
                  failed_again=task.failed_again, skipped=task.skipped)  # fmt: skip
    return snapshot

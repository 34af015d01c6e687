"""Sending one batch of a task's items: each entry redriven at most once.

In one transaction: the fenced ``UPDATE`` of the task (lease still ours, state ``running``: a pause
or cancel committed before this point stops the batch), then the next ``pending`` items (queues
paused by issue 18 left out; frozen chunks become items when too few are left), their DLQ rows
locked (``FOR NO KEY UPDATE``: a worker capturing a failed retry may still insert a row pointing
here), and each still-unresolved entry goes through the single retry's code (``shared.dlq.redrive``:
``replay_call`` per entry, sent by ``enqueue_replays`` in one pipelined round trip per group of
slots due together, then ``mark_replayed`` for the batch in two statements): the deterministic job
id ``dlq-retry:<id>``, ``retry_of`` lineage, the entry marked retried and audited (``dlq.retry``).
If the process dies after an enqueue and before the commit, nothing is marked: the next holder
enqueues the same job id and arq refuses the duplicate. An entry resolved meanwhile (by hand, a
single retry, another task) or pruned is ``skipped``. Each send waits for its throttle slot
(``shared.redrive_tasks.throttle``: absolute slots, so the batch's own overhead is caught up).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from shared.dlq.redrive import Actor, enqueue_replays, mark_replayed, replay_call
from shared.infra.db import execute, fetch, fetchrow
from shared.infra.errors import Conflict
from shared.infra.metrics import Metrics
from shared.jobs.enqueue_once import UniqueCall
from shared.redrive_tasks.lease import FENCE, Lease, fence_args
from shared.redrive_tasks.throttle import Throttle

# At high rates, sleep this much past the next slot so the slots due by then share one round trip
# (never early: a send waits for its slot; at 1,000/s about 5 a trip, at 10/s 4 ms late each).
COALESCE_SECONDS = 0.004


@dataclass(slots=True)
class BatchResult:
    running: bool  # False: the task is no longer running or the lease is lost; nothing was sent
    sent: int = 0
    skipped: int = 0
    by_queue: dict[tuple[str, str], int] = field(default_factory=dict)


TOUCH_RUNNING = f"""
UPDATE redrive_tasks SET updated_at = now() WHERE {FENCE} AND state = 'running'
RETURNING max_in_flight - (sent - succeeded - failed_again) AS room, total - sent - skipped AS remaining
"""
NEXT_ITEMS = """
SELECT seq, dlq_entry_id, queue_name FROM redrive_task_items
WHERE task_id = $1 AND state = 'pending' AND NOT (queue_name = ANY($2::text[]))
ORDER BY seq LIMIT $3
"""
# The task's next frozen chunk becomes pending items (sql/011), in the sender's fenced transaction:
# the chunk row is deleted in the statement that inserts its items, so an entry is in one place.
# An item's queue: the selection's one queue (the usual case: a failure group is one queue), else
# its DLQ row's; an entry pruned meanwhile (resolved long ago: it will be skipped) takes the
# selection's first queue as its label.
EXPLODE_NEXT_CHUNK = """
WITH chunk AS (
    DELETE FROM redrive_task_chunks
    WHERE task_id = $1 AND first_seq = (SELECT min(first_seq) FROM redrive_task_chunks WHERE task_id = $1)
    RETURNING first_seq, dlq_entry_ids, queues
)
INSERT INTO redrive_task_items (task_id, seq, dlq_entry_id, queue_name)
SELECT $1, chunk.first_seq + (e.ordinal - 1)::integer, e.id,
       CASE WHEN cardinality(chunk.queues) = 1 THEN chunk.queues[1]
            ELSE coalesce((SELECT d.queue_name FROM dead_letter_queue AS d WHERE d.id = e.id),
                          chunk.queues[1])
       END
FROM chunk, unnest(chunk.dlq_entry_ids) WITH ORDINALITY AS e(id, ordinal)
"""
LOCK_ENTRIES = """
SELECT id, queue_name, function, args, kwargs, correlation_id, resolved_at, content_escaped,
       payload_omitted, trace_id, span_id
FROM dead_letter_queue WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE
"""
MARK_SENT = """
UPDATE redrive_task_items AS i SET state = 'sent', retry_job_id = s.job_id, sent_at = now()
FROM unnest($2::int[], $3::text[]) AS s(seq, job_id)
WHERE i.task_id = $1 AND i.state = 'pending' AND i.seq = s.seq
"""
MARK_SKIPPED = """
UPDATE redrive_task_items SET state = 'skipped', outcome_at = now()
WHERE task_id = $1 AND state = 'pending' AND seq = ANY($2::int[])
"""
COUNT_SENT = f"""
UPDATE redrive_tasks SET sent = sent + $4, skipped = skipped + $5,
    first_sent_at = CASE WHEN $4 > 0 THEN coalesce(first_sent_at, now()) ELSE first_sent_at END,
    last_sent_at = CASE WHEN $4 > 0 THEN now() ELSE last_sent_at END
WHERE {FENCE}
"""


async def send_batch(
    pool: Any,
    redis: ArqRedis,
    metrics: Metrics | None,
    lease: Lease,
    *,
    count: int,
    paused_queues: list[str],
    throttle: Throttle,
    clock: Callable[[], float] = time.monotonic,
) -> BatchResult:
    async with pool.acquire() as conn, conn.transaction():
        task = await fetchrow(conn, "redrive_touch_running", TOUCH_RUNNING, *fence_args(lease))
        if task is None:
            return BatchResult(running=False)
        count = min(count, task["room"], task["remaining"])  # at most max_in_flight without an outcome
        if count <= 0:
            return BatchResult(running=True)
        items = await _next_items(conn, lease, paused_queues, count)
        if not items:
            return BatchResult(running=True)
        rows = await fetch(conn, "redrive_lock_entries", LOCK_ENTRIES, [i["dlq_entry_id"] for i in items])
        by_id = {row["id"]: row for row in rows}
        actor = Actor(name=f"redrive:{lease.task_id}")
        result = BatchResult(running=True)
        to_send: list[tuple[Any, UniqueCall]] = []
        skipped: list[int] = []
        for item in items:
            row = by_id.get(item["dlq_entry_id"])
            call = None
            if row is not None and row["resolved_at"] is None:
                with contextlib.suppress(Conflict):  # no payload to replay: leave it for a human
                    call = replay_call(row)
            if call is None:
                skipped.append(item["seq"])
                _count(result, item["queue_name"], "skipped")
            else:
                to_send.append((item, call))
        await _send_on_schedule(redis, metrics, throttle, clock, [call for _, call in to_send])
        sent_seqs = [item["seq"] for item, _ in to_send]
        sent_jobs = [call.job_id for _, call in to_send]
        sent_entries = [by_id[item["dlq_entry_id"]]["id"] for item, _ in to_send]
        for item, _ in to_send:
            _count(result, item["queue_name"], "sent")
        if sent_seqs:
            await mark_replayed(conn, sent_entries, actor, {"redrive_task_id": str(lease.task_id)})
            await execute(conn, "redrive_mark_sent", MARK_SENT, lease.task_id, sent_seqs, sent_jobs)
        if skipped:
            await execute(conn, "redrive_mark_skipped", MARK_SKIPPED, lease.task_id, skipped)
        await execute(
            conn, "redrive_count_sent", COUNT_SENT, *fence_args(lease), len(sent_seqs), len(skipped)
        )
        result.sent, result.skipped = len(sent_seqs), len(skipped)
    if metrics is not None:
        for (queue, outcome), n in result.by_queue.items():
            metrics.inc(metrics.redrive_jobs_total, {"queue": queue, "outcome": outcome}, n)
    return result


async def _next_items(conn: Any, lease: Lease, paused_queues: list[str], count: int) -> list[Any]:
    """The next ``count`` pending items outside paused queues, turning frozen chunks into items while
    there are too few (a chunk of a paused queue becomes items that simply wait)."""
    while True:
        items: list[Any] = await fetch(
            conn, "redrive_next_items", NEXT_ITEMS, lease.task_id, paused_queues, count
        )
        if len(items) >= count:
            return items
        status = await execute(conn, "redrive_explode_next_chunk", EXPLODE_NEXT_CHUNK, lease.task_id)
        if status.split()[-1] == "0":  # no chunk left
            return items


async def _send_on_schedule(
    redis: ArqRedis,
    metrics: Metrics | None,
    throttle: Throttle,
    clock: Callable[[], float],
    calls: list[UniqueCall],
) -> None:
    """Send ``calls`` in order, none before its slot: whatever is due goes in one pipelined round
    trip, then the loop sleeps until the next slot (plus ``COALESCE_SECONDS``, so at high rates a
    few slots share a round trip and a wake-up instead of one each)."""
    done = 0
    while done < len(calls):
        now = clock()
        due = min(throttle.due_within(now, 0.0), len(calls) - done)
        if due <= 0:
            await asyncio.sleep(max(throttle.next_at - now, 0.0) + COALESCE_SECONDS)
            continue
        for _ in range(due):
            throttle.take(now)  # each slot is at or before now
        await enqueue_replays(redis, metrics, calls[done : done + due])
        done += due


def _count(result: BatchResult, queue: str, outcome: str) -> None:
    result.by_queue[(queue, outcome)] = result.by_queue.get((queue, outcome), 0) + 1

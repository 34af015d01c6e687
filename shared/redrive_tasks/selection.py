"""Creating a redrive task: the selection is frozen when the task is created.

One set-based ``INSERT … SELECT`` copies the chosen entries (unresolved, with a payload to replay,
oldest failure first) into ``redrive_task_chunks``: ``CHUNK_SIZE`` entries' ids and queues per row,
in order (sql/011: the executor turns a chunk into ``redrive_task_items`` when it gets there).
Entries that fail later never join the task.
By ids or by a filter (queue, fingerprint, function, error type, failed-at range; at least one
field). A dry run answers the count and a sample and creates nothing. An empty selection is
``Invalid`` (400): a task with nothing to do is a mistake worth telling.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared import audit
from shared.dlq.redrive import Actor
from shared.infra.db import Conn, execute, fetch, fetchrow, fetchval
from shared.infra.errors import Invalid
from shared.jobs.queues import ALL_QUEUES
from shared.redrive_tasks.model import (
    DEFAULT_BREAKER_MIN_OUTCOMES,
    DEFAULT_BREAKER_THRESHOLD,
    MAX_IN_FLIGHT,
    MAX_RATE_PER_SECOND,
    TASK_COLUMNS,
    RedriveTask,
)

MAX_IDS = 100_000
SAMPLE_SIZE = 10
# Entries per frozen chunk: ~100 rows for a 100,000-entry group at creation; the executor turns one
# chunk into items at a time (a batch is at most 500 sends).
CHUNK_SIZE = 1000
FILTER_FIELDS = ("queue", "fingerprint", "function", "error_type", "failed_from", "failed_to")


@dataclass(frozen=True, slots=True)
class SelectionFilter:
    queue: str | None = None
    fingerprint: str | None = None
    function: str | None = None
    error_type: str | None = None
    failed_from: datetime | None = None
    failed_to: datetime | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> SelectionFilter:
        """For callers holding loose JSON (the CLI): unknown fields are ``Invalid``."""
        unknown = sorted(set(data) - set(FILTER_FIELDS))
        if unknown:
            raise Invalid(f"unknown filter field(s): {', '.join(unknown)}; known: {', '.join(FILTER_FIELDS)}")
        values = dict(data)
        for key in ("failed_from", "failed_to"):
            if isinstance(values.get(key), str):
                try:
                    values[key] = datetime.fromisoformat(values[key])
                except ValueError as exc:
                    raise Invalid(f"{key} must be an ISO 8601 time") from exc
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in FILTER_FIELDS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a caller asks for. Exactly one of ``ids`` and ``filter``."""

    name: str
    rate_per_second: float
    max_in_flight: int
    reason: str = ""
    ids: Sequence[uuid.UUID] | None = None
    filter: SelectionFilter | None = None
    breaker_min_outcomes: int = DEFAULT_BREAKER_MIN_OUTCOMES
    breaker_threshold: float = DEFAULT_BREAKER_THRESHOLD
    limit: int | None = None  # at most this many entries, oldest failure first
    via: str | None = None  # the action that asked for it, for the audit (e.g. dlq.bulk_retry)


@dataclass(frozen=True, slots=True)
class SampleEntry:
    id: uuid.UUID
    queue: str
    function: str
    error_type: str
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class DryRun:
    count: int
    sample: list[SampleEntry] = field(default_factory=list)


def validate(spec: TaskSpec) -> None:
    if (spec.ids is None) == (spec.filter is None):
        raise Invalid('give either "ids" or "filter"')
    if not 0 < spec.rate_per_second <= MAX_RATE_PER_SECOND:
        raise Invalid(f"rate_per_second must be > 0 and at most {MAX_RATE_PER_SECOND:g}")
    if not 1 <= spec.max_in_flight <= MAX_IN_FLIGHT:
        raise Invalid(f"max_in_flight must be between 1 and {MAX_IN_FLIGHT}")
    if not 1 <= spec.breaker_min_outcomes <= 100_000:
        raise Invalid("breaker_min_outcomes must be between 1 and 100000")
    if not 0 < spec.breaker_threshold <= 1:
        raise Invalid("breaker_threshold must be > 0 and at most 1")
    if not 1 <= len(spec.name) <= 200 or len(spec.reason) > 2000:
        raise Invalid("name must hold 1 to 200 characters, reason at most 2000")
    if spec.limit is not None and spec.limit < 1:
        raise Invalid("max must be at least 1")
    if spec.ids is not None and not 1 <= len(spec.ids) <= MAX_IDS:
        raise Invalid(f"ids must hold 1 to {MAX_IDS} entries")
    if spec.filter is not None:
        _validate_filter(spec.filter)


def _validate_filter(f: SelectionFilter) -> None:
    if not f.as_json():
        raise Invalid("the filter needs at least one field (a redrive of the whole DLQ is not a filter)")
    if f.queue is not None and f.queue not in ALL_QUEUES:
        raise Invalid(f"queue must be one of {', '.join(ALL_QUEUES)}")
    if f.failed_from and f.failed_to and f.failed_from > f.failed_to:
        raise Invalid("failed_from must not be after failed_to")
    for key in ("failed_from", "failed_to"):
        value = getattr(f, key)
        if value is not None and value.tzinfo is None:
            raise Invalid(f"{key} must carry a time zone")


# Only what a retry can replay (shared.dlq.redrive: no '<unknown>' function, no omitted payload),
# and not waiting in another live task already (an entry is never frozen into two tasks at once;
# creations are serialized by CREATION_LOCK so two concurrent creations take disjoint entries).
# One constant query for every filter: an absent field is NULL and matches everything.
# Cost (issue 19: 100,000 entries well under 1 s): "waiting in a live task" reads only the live
# tasks' pending items (open_idx, by task id) and chunks (by primary key), never what cancelled
# tasks leave behind; the numbering sort stays in memory (CREATION_WORK_MEM: 100,000 rows need
# ~11 MB, the default 4 MB spilled them to disk); the selection is written as ~100 chunk rows, not
# 100,000 item rows (sql/011).
ELIGIBLE = """
    d.resolved_at IS NULL AND d.function <> '<unknown>' AND d.payload_omitted IS NULL
    AND ($1::uuid[] IS NULL OR d.id = ANY($1::uuid[]))
    AND ($2::text IS NULL OR d.queue_name = $2) AND ($3::text IS NULL OR d.fingerprint = $3)
    AND ($4::text IS NULL OR d.function = $4) AND ($5::text IS NULL OR d.error_type = $5)
    AND ($6::timestamptz IS NULL OR d.failed_at >= $6) AND ($7::timestamptz IS NULL OR d.failed_at < $7)
    AND NOT EXISTS (
        SELECT 1 FROM redrive_task_items AS i
        WHERE i.task_id = ANY (ARRAY(SELECT t.id FROM redrive_tasks AS t
                                     WHERE t.state IN ('pending', 'running', 'paused', 'tripped')))
          AND i.state = 'pending' AND i.dlq_entry_id = d.id)
    AND NOT EXISTS (
        SELECT 1 FROM redrive_task_chunks AS c, unnest(c.dlq_entry_ids) AS e(id)
        WHERE c.task_id = ANY (ARRAY(SELECT t.id FROM redrive_tasks AS t
                                     WHERE t.state IN ('pending', 'running', 'paused', 'tripped')))
          AND e.id = d.id)
"""
PICKED = f"""
SELECT d.id, d.queue_name, d.function, d.error_type, d.failed_at FROM dead_letter_queue AS d
WHERE {ELIGIBLE} ORDER BY d.failed_at, d.id LIMIT $8
"""
COUNT_SELECTION = f"SELECT count(*) FROM ({PICKED}) AS picked"
SAMPLE_SELECTION = f"SELECT * FROM ({PICKED}) AS picked ORDER BY failed_at, id LIMIT {SAMPLE_SIZE}"
CREATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('fmhl_redrive_task_create'))"
# for this transaction only (SET LOCAL: safe behind a pooler in transaction mode)
CREATION_WORK_MEM = "SET LOCAL work_mem = '32MB'"
INSERT_TASK = f"""
INSERT INTO redrive_tasks (id, name, reason, selection, rate_per_second, max_in_flight,
                           breaker_min_outcomes, breaker_threshold, total, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9)
RETURNING {TASK_COLUMNS}
"""
# The ids aggregated in failure order (array_agg's own ORDER BY: Postgres 16 may feed a query
# level's aggregates presorted for one of them, so the input order of a plain array_agg is not
# to be relied on; a DISTINCT beside it reordered it), then cut into CHUNK_SIZE slices (O(1)
# each: uuids are fixed-length). The selection's distinct queues come from a hashed DISTINCT.
# Measured at 100,000 entries (bench/redrive_case.py, quiet): creation 1.2-1.4x a bare count(*) of
# the group; the window-numbered, grouped version ~1.4-1.5x the selection's scan, one items row
# per entry 2.2x the count(*).
FREEZE_SELECTION = f"""
WITH picked AS MATERIALIZED ({PICKED}),
selected AS (
    SELECT array_agg(id ORDER BY failed_at, id) AS ids,
           ARRAY(SELECT DISTINCT queue_name FROM picked) AS queues
    FROM picked
),
frozen AS (
    INSERT INTO redrive_task_chunks (task_id, first_seq, dlq_entry_ids, queues)
    SELECT $9, s.start, selected.ids[s.start : s.start + {CHUNK_SIZE} - 1], selected.queues
    FROM selected, generate_series(1, cardinality(selected.ids), {CHUNK_SIZE}) AS s(start)
    RETURNING cardinality(dlq_entry_ids) AS entries
)
SELECT coalesce(sum(entries), 0)::integer FROM frozen
"""
SET_TOTAL = f"UPDATE redrive_tasks SET total = $2 WHERE id = $1 RETURNING {TASK_COLUMNS}"


def _selection_args(spec: TaskSpec) -> tuple[Any, ...]:
    f = spec.filter or SelectionFilter()
    ids = list(spec.ids) if spec.ids is not None else None
    return (ids, f.queue, f.fingerprint, f.function, f.error_type, f.failed_from, f.failed_to, spec.limit)


async def dry_run(conn: Conn, spec: TaskSpec) -> DryRun:
    validate(spec)
    args = _selection_args(spec)
    count = int(await fetchval(conn, "redrive_count_selection", COUNT_SELECTION, *args))
    rows = await fetch(conn, "redrive_sample_selection", SAMPLE_SELECTION, *args)
    sample = [
        SampleEntry(r["id"], r["queue_name"], r["function"], r["error_type"], r["failed_at"]) for r in rows
    ]
    return DryRun(count, sample)


def _selection_json(spec: TaskSpec) -> dict[str, Any]:
    limit = {} if spec.limit is None else {"max": spec.limit}
    if spec.ids is not None:
        return {"ids": len(spec.ids), **limit}
    assert spec.filter is not None
    return {"filter": spec.filter.as_json(), **limit}


async def create_task(pool: Any, spec: TaskSpec, actor: Actor) -> RedriveTask:
    """Create the task with its frozen selection, in one transaction, audited. ``Invalid`` when
    nothing is selected (then nothing is created)."""
    validate(spec)
    task_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await execute(conn, "redrive_creation_lock", CREATION_LOCK)
        await execute(conn, "redrive_creation_work_mem", CREATION_WORK_MEM)
        await fetchrow(
            conn,
            "redrive_insert_task",
            INSERT_TASK,
            task_id,
            spec.name,
            spec.reason,
            _selection_json(spec),
            spec.rate_per_second,
            spec.max_in_flight,
            spec.breaker_min_outcomes,
            spec.breaker_threshold,
            actor.name,
        )
        args = (*_selection_args(spec), task_id)
        total = int(await fetchval(conn, "redrive_freeze_selection", FREEZE_SELECTION, *args))
        if total == 0:
            raise Invalid(
                "the selection is empty: no unresolved, replayable entry matches", code="empty_selection"
            )
        row = await fetchrow(conn, "redrive_set_total", SET_TOTAL, task_id, total)
        await audit.record(
            conn,
            actor=actor.name,
            actor_user_id=actor.user_id,
            ip=actor.ip,
            action="redrive.create",
            target_type="redrive_task",
            target_id=str(task_id),
            metadata={
                "name": spec.name,
                "reason": spec.reason,
                "selection": _selection_json(spec),
                "total": total,
                "rate_per_second": spec.rate_per_second,
                "max_in_flight": spec.max_in_flight,
                "via": spec.via,
            },
        )
    return RedriveTask.from_row(row)


ITEM_JOB_IDS = """
SELECT 'dlq-retry:' || dlq_entry_id AS job_id FROM redrive_task_entries
WHERE task_id = $1 AND state IN ('pending', 'sent') ORDER BY seq LIMIT $2
"""


async def item_job_ids(conn: Conn, task_id: uuid.UUID, limit: int) -> list[str]:
    """The job id each frozen entry runs under when sent (``shared.dlq.redrive.retry_job_id``), for
    a task just created (its entries pending or sent, in chunks or items)."""
    return [r["job_id"] for r in await fetch(conn, "redrive_item_job_ids", ITEM_JOB_IDS, task_id, limit)]

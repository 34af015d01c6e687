"""Reading redrive tasks and an admin's state changes: pause, resume, cancel.

Each change is one conditional ``UPDATE … WHERE state IN (…)``: of two concurrent submits one
wins and the other gets ``Conflict`` (409). The executor re-reads the state on every batch (its
fenced ``UPDATE`` requires ``running``), so a change takes effect within one batch (< 1 s).
Resuming a tripped task restarts the breaker's count from that moment (otherwise the old
outcomes would trip it again at once). Every change is audited in its transaction.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from shared import audit
from shared.dlq.redrive import Actor
from shared.infra.db import Conn, fetch, fetchrow
from shared.infra.errors import Conflict, Invalid, NotFound
from shared.infra.metrics import Metrics
from shared.redrive_tasks.model import TASK_COLUMNS, TASK_STATES, RedriveTask, TaskState

Action = Literal["pause", "resume", "cancel"]

GET_TASK = f"SELECT {TASK_COLUMNS} FROM redrive_tasks WHERE id = $1"
LIST_FIRST = f"SELECT {TASK_COLUMNS} FROM redrive_tasks ORDER BY created_at DESC, id DESC LIMIT $1"
LIST_AFTER = f"""
SELECT {TASK_COLUMNS} FROM redrive_tasks WHERE (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC LIMIT $1
"""
# the queues of a task's pending entries: its pending items' queues, and while chunks wait to become
# items the queues of the whole selection (sql/011 keeps no per-entry queue in a chunk)
QUEUES_OF_TASK = """
SELECT queue_name FROM redrive_task_items WHERE task_id = $1 AND state = 'pending'
UNION
SELECT unnest(queues) FROM redrive_task_chunks WHERE task_id = $1
"""


@dataclass(frozen=True, slots=True)
class TaskPage:
    items: list[RedriveTask]
    next_cursor: str | None


async def get_task(conn: Conn, task_id: uuid.UUID) -> RedriveTask:
    row = await fetchrow(conn, "redrive_get_task", GET_TASK, task_id)
    if row is None:
        raise NotFound(f"no redrive task {task_id}")
    return RedriveTask.from_row(row)


async def pending_queues(conn: Conn, task_id: uuid.UUID) -> list[str]:
    rows = await fetch(conn, "redrive_task_queues", QUEUES_OF_TASK, task_id)
    return sorted(r["queue_name"] for r in rows)


def _encode_cursor(task: RedriveTask) -> str:
    raw = orjson.dumps([task.created_at.isoformat(), str(task.id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, task_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), uuid.UUID(task_id)
    except (ValueError, TypeError) as exc:
        raise Invalid("cursor is not one this API returned") from exc


async def list_tasks(conn: Conn, *, limit: int, cursor: str | None) -> TaskPage:
    """Newest first, keyset pages."""
    if cursor is None:
        rows = await fetch(conn, "redrive_list_tasks", LIST_FIRST, limit + 1)
    else:
        created, task_id = _decode_cursor(cursor)
        rows = await fetch(conn, "redrive_list_tasks_after", LIST_AFTER, limit + 1, created, task_id)
    tasks = [RedriveTask.from_row(r) for r in rows[:limit]]
    return TaskPage(tasks, _encode_cursor(tasks[-1]) if len(rows) > limit else None)


# Which states each action leaves from, and where it goes.
TRANSITIONS: dict[Action, tuple[tuple[TaskState, ...], TaskState]] = {
    "pause": (("pending", "running"), "paused"),
    "resume": (("paused", "tripped"), "running"),
    "cancel": (("pending", "running", "paused", "tripped"), "cancelled"),
}
CHANGE_STATE = f"""
UPDATE redrive_tasks
SET state = $2, state_reason = $4, updated_at = now(),
    finished_at = CASE WHEN $2 = 'cancelled' THEN now() ELSE finished_at END,
    breaker_base_succeeded = CASE WHEN state = 'tripped' THEN succeeded ELSE breaker_base_succeeded END,
    breaker_base_failed = CASE WHEN state = 'tripped' THEN failed_again ELSE breaker_base_failed END
WHERE id = $1 AND state = ANY($3::text[])
RETURNING {TASK_COLUMNS}
"""


async def change_state(pool: Any, task_id: uuid.UUID, action: Action, actor: Actor) -> RedriveTask:
    """Pause, resume or cancel; 404 unknown task, 409 when its state does not allow it."""
    sources, target = TRANSITIONS[action]
    note = f"{action}d by {actor.name}" if action != "cancel" else f"cancelled by {actor.name}"
    async with pool.acquire() as conn, conn.transaction():
        row = await fetchrow(
            conn,
            "redrive_change_state",
            CHANGE_STATE,
            task_id,
            target,
            list(sources),
            None if action == "resume" else note,
        )
        if row is None:
            current = await get_task(conn, task_id)
            raise Conflict(f"cannot {action} a task that is {current.state}", code="wrong_state")
        task = RedriveTask.from_row(row)
        await audit.record(
            conn,
            actor=actor.name,
            actor_user_id=actor.user_id,
            ip=actor.ip,
            action=f"redrive.{action}",
            target_type="redrive_task",
            target_id=str(task_id),
            metadata={"state": task.state, "sent": task.sent, "remaining": task.remaining},
        )
    return task


COUNT_BY_STATE = "SELECT state, count(*) AS n FROM redrive_tasks GROUP BY state"


async def count_by_state(conn: Conn) -> dict[str, int]:
    rows = await fetch(conn, "redrive_count_by_state", COUNT_BY_STATE)
    return {r["state"]: int(r["n"]) for r in rows}


def export_task_gauges(counts: dict[str, int], metrics: Metrics) -> None:
    """``fmhl_redrive_tasks{state}``, every state present (0 when none), set by the service at scrape."""
    for state in TASK_STATES:
        metrics.set(metrics.redrive_tasks, counts.get(state, 0), {"state": state})

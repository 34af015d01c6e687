"""Redrive task routes: create (or dry-run), list, detail, pause, resume, cancel.

Thin: decode (``service.contract``) → ``shared.redrive_tasks`` → the typed answer. Admins act;
support reads tasks on the console (the API is ``auth="admin"``, as every admin route). Creating is
``201`` with the task, a dry run ``200`` with the count and a sample (nothing created). Unknown
filter field, rate ≤ 0, empty selection: 400.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.responses import Response

from service.contract import Call, NoBody, NoParams, operation
from shared.dlq.redrive import Actor
from shared.jobs.pause_state import read_pauses
from shared.jobs.queues import QueueName
from shared.redrive_tasks.control import Action, change_state, get_task, list_tasks, pending_queues
from shared.redrive_tasks.model import (
    DEFAULT_BREAKER_MIN_OUTCOMES,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_RATE_PER_SECOND,
    MAX_IN_FLIGHT,
    MAX_RATE_PER_SECOND,
    RedriveTask,
    TaskFields,
)
from shared.redrive_tasks.selection import MAX_IDS, DryRun, SelectionFilter, TaskSpec, create_task, dry_run

BASE = "/api/v1/admin/redrives"
TAGS = ("redrives",)
Fingerprint = Annotated[str, Meta(min_length=1, max_length=64)]
Text = Annotated[str, Meta(min_length=1, max_length=200)]


class RedriveFilter(Struct, forbid_unknown_fields=True):
    """At least one field; an entry matches when it matches every field given."""

    queue: QueueName | None = None
    fingerprint: Fingerprint | None = None
    function: Text | None = None
    error_type: Text | None = None
    failed_from: Annotated[datetime, Meta(tz=True, description="failed at or after")] | None = None
    failed_to: Annotated[datetime, Meta(tz=True, description="failed before")] | None = None


class CreateRedriveBody(Struct, forbid_unknown_fields=True):
    """Selection: exactly one of ``ids`` and ``filter`` (frozen at creation)."""

    name: Text
    ids: Annotated[list[uuid.UUID], Meta(min_length=1, max_length=MAX_IDS)] | None = None
    filter: RedriveFilter | None = None
    reason: Annotated[str, Meta(max_length=2000)] = ""
    rate_per_second: Annotated[float, Meta(gt=0, le=MAX_RATE_PER_SECOND, description="jobs/s")] = (
        DEFAULT_RATE_PER_SECOND
    )
    max_in_flight: Annotated[int, Meta(ge=1, le=MAX_IN_FLIGHT, description="unfinished retried jobs")] = (
        DEFAULT_MAX_IN_FLIGHT
    )
    breaker_min_outcomes: Annotated[int, Meta(ge=1, le=100_000)] = DEFAULT_BREAKER_MIN_OUTCOMES
    breaker_threshold: Annotated[float, Meta(gt=0, le=1, description="share failing again that trips")] = (
        DEFAULT_BREAKER_THRESHOLD
    )
    dry_run: bool = False


class ListQuery(Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=200)] = 50
    cursor: Annotated[str, Meta(max_length=200)] | None = None


class TaskRef(Struct, forbid_unknown_fields=True):
    task_id: uuid.UUID


class TaskView(TaskFields, tag_field="kind", tag="redrive_task", frozen=True, kw_only=True):
    """A task with its progress: sent / succeeded / failed again / in flight / remaining."""

    in_flight: Annotated[int, Meta(description="sent, outcome not in yet")]
    remaining: Annotated[int, Meta(description="not sent yet")]
    achieved_rate: Annotated[float | None, Meta(description="jobs/s between the first and last send")]
    eta_seconds: float | None
    waiting_on_paused_queues: list[str] | UnsetType = UNSET

    @classmethod
    def of(cls, task: RedriveTask, paused: list[str] | UnsetType = UNSET) -> TaskView:
        return cls(
            **{name: getattr(task, name) for name in TaskFields.__struct_fields__},
            in_flight=task.in_flight,
            remaining=task.remaining,
            achieved_rate=task.achieved_rate,
            eta_seconds=task.eta_seconds,
            waiting_on_paused_queues=paused,
        )


@dataclass(frozen=True, slots=True)
class TaskList:
    items: list[TaskView]
    next_cursor: str | None


class SampleView(Struct):
    id: uuid.UUID
    queue: str
    function: str
    error_type: str
    failed_at: datetime


class DryRunView(Struct, tag_field="kind", tag="dry_run"):
    """The selection as it would be frozen now; nothing was created."""

    count: int
    sample: list[SampleView]


def actor_of(call: Call[Any, Any]) -> Actor:
    return Actor(name=call.principal.email, user_id=call.principal.user_id, ip=call.ip)


def spec_of(body: CreateRedriveBody) -> TaskSpec:
    flt = None
    if body.filter is not None:
        f = body.filter
        flt = SelectionFilter(f.queue, f.fingerprint, f.function, f.error_type, f.failed_from, f.failed_to)
    return TaskSpec(
        name=body.name, reason=body.reason, ids=body.ids, filter=flt, rate_per_second=body.rate_per_second,
        max_in_flight=body.max_in_flight, breaker_min_outcomes=body.breaker_min_outcomes,
        breaker_threshold=body.breaker_threshold,
    )  # fmt: skip


def dry_run_view(result: DryRun) -> DryRunView:
    sample = [SampleView(s.id, s.queue, s.function, s.error_type, s.failed_at) for s in result.sample]
    return DryRunView(result.count, sample)


CreateAnswer = TaskView | DryRunView
ADMIN_ERRORS = (400, 401, 403, 404, 409, 503)


@operation("POST", BASE, params=NoParams, body=CreateRedriveBody, response=cast(Any, CreateAnswer),
           status=201, operation_id="createRedrive",
           summary="Create a redrive task from ids or a filter (dry_run: count and sample, nothing created)",
           response_description="the task, pending until an executor takes it", tags=TAGS, auth="admin",
           other_responses={200: "dry run: the count and a sample, nothing created"},
           errors=(400, 401, 403, 503))  # fmt: skip
async def create_redrive(call: Call[NoParams, CreateRedriveBody]) -> Any:
    spec = spec_of(call.body)
    if call.body.dry_run:
        async with call.state.db.pool.acquire() as conn:
            result = await dry_run(conn, spec)
        return Response(msgspec.json.encode(dry_run_view(result)), media_type="application/json")
    return TaskView.of(await create_task(call.state.db.pool, spec, actor_of(call)))


@operation("GET", BASE, params=ListQuery, body=NoBody, response=TaskList, operation_id="listRedrives",
           summary="Redrive tasks, newest first (keyset pages)", response_description="a page",
           tags=TAGS, auth="admin", errors=(400, 401, 403, 503))  # fmt: skip
async def list_redrives(call: Call[ListQuery, NoBody]) -> TaskList:
    async with call.state.db.pool.acquire() as conn:
        page = await list_tasks(conn, limit=call.params.limit, cursor=call.params.cursor)
    return TaskList([TaskView.of(t) for t in page.items], page.next_cursor)


async def detail(call: Call[Any, Any], task_id: uuid.UUID) -> TaskView:
    async with call.state.db.pool.acquire() as conn:
        task = await get_task(conn, task_id)
        queues = await pending_queues(conn, task_id) if task.remaining else []
    pauses = await read_pauses(call.state.redis, queues) if queues else {}
    return TaskView.of(task, sorted(q for q, p in pauses.items() if p is not None))


@operation("GET", BASE + "/{task_id}", params=TaskRef, body=NoBody, response=TaskView,
           operation_id="getRedrive", summary="One redrive task with its progress, rate, ETA and state",
           response_description="the task", tags=TAGS, auth="admin",
           errors=(400, 401, 403, 404, 503))  # fmt: skip
async def get_redrive(call: Call[TaskRef, NoBody]) -> TaskView:
    return await detail(call, call.params.task_id)


async def act(call: Call[TaskRef, NoBody], action: Action) -> TaskView:
    task = await change_state(call.state.db.pool, call.params.task_id, action, actor_of(call))
    return TaskView.of(task)


@operation("POST", BASE + "/{task_id}/pause", params=TaskRef, body=NoBody, response=TaskView,
           body_required=False, operation_id="pauseRedrive", summary="Pause: nothing more is sent",
           response_description="the paused task", tags=TAGS, auth="admin", errors=ADMIN_ERRORS)  # fmt: skip
async def pause_redrive(call: Call[TaskRef, NoBody]) -> TaskView:
    return await act(call, "pause")


@operation("POST", BASE + "/{task_id}/resume", params=TaskRef, body=NoBody, response=TaskView,
           body_required=False, operation_id="resumeRedrive",
           summary="Resume a paused or tripped task (the breaker counts afresh)",
           response_description="the running task", tags=TAGS, auth="admin", errors=ADMIN_ERRORS)  # fmt: skip
async def resume_redrive(call: Call[TaskRef, NoBody]) -> TaskView:
    return await act(call, "resume")


@operation("POST", BASE + "/{task_id}/cancel", params=TaskRef, body=NoBody, response=TaskView,
           body_required=False, operation_id="cancelRedrive",
           summary="Cancel: nothing more is sent; entries not sent stay in the DLQ",
           response_description="the cancelled task", tags=TAGS, auth="admin",
           errors=ADMIN_ERRORS)  # fmt: skip
async def cancel_redrive(call: Call[TaskRef, NoBody]) -> TaskView:
    return await act(call, "cancel")


OPERATIONS = [create_redrive, list_redrives, get_redrive, pause_redrive, resume_redrive, cancel_redrive]

"""Live jobs of a queue and actions on them: list by state, detail, cancel, abort, run now, bulk cancel.

Thin: decode → ``shared.controls.live`` (keyset pages over arq's sorted set, one Lua round trip
per page) or ``shared.controls.actions`` (each action exactly once by a Lua script, audited with
actor, reason, target ``{queue}:{job_id}``, ip and request id; cancelled/aborted jobs leave a
resolved DLQ row) → the typed answer. Admin only, reads included: ``support`` gets 403 on every
admin API route and sees these lists on the console instead.

Statuses: 404 ``job_not_found`` (never was, or finished), 409 for the wrong state or an action
already done (``already_ended``, ``job_running``, ``job_not_running``, ``already_aborting``,
``already_due``), 400 for an unknown queue or state, a bad cursor or an unknown function.

Bulk cancel is confirmed like the console's group actions: ``confirm`` is either the count the
operator was shown (``GET …/jobs/count?function=``), and then *at most* that many jobs are
cancelled, so jobs enqueued after the confirmation are never taken by it; or ``true``, which takes
every waiting job of the function (up to 10,000 per call). ``false`` or 0 is a 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from msgspec import Meta, Struct

from service.contract import Call, NoBody, operation
from shared.controls.actions import (
    BULK_CANCEL_MAX,
    BulkCancelled,
    JobActionResult,
    WaitingCount,
    abort_job,
    bulk_cancel,
    cancel_job,
    count_waiting,
    run_job_now,
)
from shared.controls.live import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    JobState,
    LiveJob,
    LivePage,
    get_live_job,
    list_live_jobs,
)
from shared.controls.pause import REASON_MAX_CHARS
from shared.infra.errors import Invalid
from shared.jobs.catalogue import jobs_on
from shared.jobs.queues import JobQueueName

BASE = "/api/v1/admin/queues/{queue}/jobs"
ADMIN: dict[str, Any] = {"tags": ("live jobs",), "auth": "admin"}
READ_ERRORS = (400, 401, 403, 503)
ACTION_ERRORS = (400, 401, 403, 404, 409, 413, 503)

JobId = Annotated[str, Meta(min_length=1, max_length=200, description="arq job id")]
Function = Annotated[str, Meta(min_length=1, max_length=200, description="a job function of this queue")]
Reason = Annotated[str, Meta(max_length=REASON_MAX_CHARS)]


class QueueRef(Struct, forbid_unknown_fields=True):
    queue: JobQueueName


class LiveQuery(Struct, forbid_unknown_fields=True):
    queue: JobQueueName
    state: JobState = "queued"
    cursor: (
        Annotated[str, Meta(min_length=1, max_length=512, description="next_cursor of the previous page")]
        | None
    ) = None
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT


class CountQuery(Struct, forbid_unknown_fields=True):
    queue: JobQueueName
    function: Function


class JobRef(Struct, forbid_unknown_fields=True):
    queue: JobQueueName
    job_id: JobId


class ActionBody(Struct, forbid_unknown_fields=True):
    reason: Reason | None = None


class BulkCancelBody(Struct, forbid_unknown_fields=True):
    function: Function
    reason: Annotated[str, Meta(min_length=1, max_length=REASON_MAX_CHARS, description="why; required")]
    confirm: Annotated[
        int | bool,
        Meta(
            description="the count you were shown (cancels at most that many), or true for all (up to 10,000)"
        ),
    ]


def _who(call: Call[Any, Any]) -> dict[str, Any]:
    principal = call.principal
    return {"actor": principal.email, "actor_user_id": principal.user_id, "ip": call.ip}


def _job(call: Call[JobRef, Any]) -> dict[str, Any]:
    return {"queue": call.params.queue, "job_id": call.params.job_id}


async def _act(
    call: Call[JobRef, ActionBody], action: Callable[..., Awaitable[JobActionResult]]
) -> JobActionResult:
    """One action on the job in the path, by the caller, with the body's reason."""
    async with call.state.db.pool.acquire() as conn:
        return await action(conn, call.state.redis, reason=call.body.reason, **_job(call), **_who(call))


def check_function(queue: str, function: str) -> None:
    known = [spec.name for spec in jobs_on(queue)]
    if function not in known:
        raise Invalid(
            f"unknown function {function!r} on {queue}; expected one of {', '.join(known)}",
            code="unknown_function",
        )


def confirmed_max(confirm: int | bool) -> int:
    """``true`` → every waiting job (the bulk cap); a count → at most that many."""
    if confirm is True:
        return BULK_CANCEL_MAX
    if confirm is False or not 1 <= confirm <= BULK_CANCEL_MAX:
        raise Invalid(
            f"confirm must be true or the count you were shown (1 to {BULK_CANCEL_MAX})", code="not_confirmed"
        )
    return int(confirm)


@operation("GET", BASE, params=LiveQuery, body=NoBody, response=LivePage, operation_id="listLiveJobs",
           summary="Live jobs of a queue in one state (queued, scheduled, retrying, running), keyset pages",
           description="Oldest first by due time (running: by start). A page may be shorter than "
                       "limit and still carry next_cursor; follow it until it is null.",
           response_description="a page", errors=READ_ERRORS, **ADMIN)  # fmt: skip
async def list_jobs(call: Call[LiveQuery, NoBody]) -> LivePage:
    query = call.params
    return await list_live_jobs(
        call.state.redis,
        queue=query.queue,
        state=query.state,
        cursor=query.cursor,
        limit=query.limit,
        job_policies=call.state.settings.job_policies,
    )


@operation("GET", BASE + "/count", params=CountQuery, body=NoBody, response=WaitingCount,
           operation_id="countWaitingJobs",
           summary="How many waiting jobs of one function a bulk cancel would take (the confirmation)",
           response_description="the count; capped = at least", errors=READ_ERRORS, **ADMIN)  # fmt: skip
async def count_jobs(call: Call[CountQuery, NoBody]) -> WaitingCount:
    check_function(call.params.queue, call.params.function)
    return await count_waiting(call.state.redis, queue=call.params.queue, function=call.params.function)


@operation("POST", BASE + "/cancel", params=QueueRef, body=BulkCancelBody, response=BulkCancelled,
           operation_id="bulkCancelJobs",
           summary="Cancel every waiting job of one function on a queue; each recorded, exactly once",
           response_description="what was cancelled", errors=ACTION_ERRORS, **ADMIN)  # fmt: skip
async def bulk_cancel_jobs(call: Call[QueueRef, BulkCancelBody]) -> BulkCancelled:
    queue, body = call.params.queue, call.body
    check_function(queue, body.function)
    max_jobs = confirmed_max(body.confirm)
    async with call.state.db.pool.acquire() as conn:
        return await bulk_cancel(
            conn, call.state.redis, queue=queue, function=body.function, reason=body.reason,
            max_jobs=max_jobs, **_who(call),
        )  # fmt: skip


@operation("GET", BASE + "/{job_id}", params=JobRef, body=NoBody, response=LiveJob, operation_id="getLiveJob",
           summary="One live job with a longer argument preview (404 once it finished)",
           response_description="the job", errors=(400, 401, 403, 404, 503), **ADMIN)  # fmt: skip
async def job_detail(call: Call[JobRef, NoBody]) -> LiveJob:
    return await get_live_job(
        call.state.redis,
        queue=call.params.queue,
        job_id=call.params.job_id,
        job_policies=call.state.settings.job_policies,
    )


@operation("POST", BASE + "/{job_id}/cancel", params=JobRef, body=ActionBody, response=JobActionResult,
           body_required=False, operation_id="cancelJob",
           summary="Cancel a queued, scheduled or retrying job: removed, audited, kept as a resolved DLQ row",
           response_description="the job is cancelled", errors=ACTION_ERRORS, **ADMIN)  # fmt: skip
async def cancel(call: Call[JobRef, ActionBody]) -> JobActionResult:
    return await _act(call, cancel_job)


@operation("POST", BASE + "/{job_id}/abort", params=JobRef, body=ActionBody, response=JobActionResult,
           status=202, body_required=False, operation_id="abortJob",
           summary="Abort a running job through arq's abort: its worker cancels it and records it as aborted",
           response_description="abort requested", errors=ACTION_ERRORS, **ADMIN)  # fmt: skip
async def abort(call: Call[JobRef, ActionBody]) -> JobActionResult:
    return await _act(call, abort_job)


@operation("POST", BASE + "/{job_id}/run-now", params=JobRef, body=ActionBody, response=JobActionResult,
           body_required=False, operation_id="runJobNow",
           summary="Make a scheduled or retrying job due now (it keeps its try count)",
           response_description="due now", errors=ACTION_ERRORS, **ADMIN)  # fmt: skip
async def run_now(call: Call[JobRef, ActionBody]) -> JobActionResult:
    return await _act(call, run_job_now)


# Starlette matches in this order: the fixed paths before ``{job_id}``.
OPERATIONS = [list_jobs, count_jobs, bulk_cancel_jobs, job_detail, cancel, abort, run_now]

"""Console incident controls: live jobs by state, a job's page, and the actions with their
confirmations (pause/resume a queue, cancel/abort/run now one job, bulk cancel by function).

Every action is a GET confirmation page (what it will do, a reason field) and a POST that
``console_view(..., action=True)`` guards (session, CSRF, admin role: ``support`` sees the pages
and no control, a forged POST is 403). The POST calls the same ``shared.controls`` use case as the
API, so it is exactly once (a second click gets the 409 page) and audited the same way, then
redirects (303) to the page that shows the result. The pages read Redis only: a live-jobs page is
one keyset page over arq's sorted set (``shared.controls.live``), whatever the queue's depth.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from service.console.render import redirect, render
from service.console.security import ConsoleUser
from service.console.views import actor
from service.state import app_state
from shared.controls.actions import (
    BULK_CANCEL_MAX,
    abort_job,
    bulk_cancel,
    cancel_job,
    count_waiting,
    run_job_now,
)
from shared.controls.live import JOB_STATES, check_queue, get_live_job, list_live_jobs
from shared.controls.pause import REASON_MAX_CHARS, check_pausable, pause_queue, resume_queue
from shared.infra.errors import Invalid, NotFound
from shared.jobs.catalogue import jobs_on
from shared.jobs.pause_state import read_pause
from shared.jobs.queues import JOB_QUEUES

PAGE_SIZE = 50
MAX_JOB_ID_CHARS = 200
QUEUE_ACTIONS = ("pause", "resume")
JOB_ACTIONS = ("cancel", "abort", "run-now")
# The states each job action applies to (the use case decides again, atomically).
ACTION_STATES = {
    "cancel": ("queued", "scheduled", "retrying"),
    "abort": ("running",),
    "run-now": ("scheduled", "retrying"),
}
NOTICES = {
    "job_cancelled": "Job cancelled. It is kept in the dead letters as cancelled (resolved).",
    "abort_requested": "Abort requested: the worker cancels the job within about a second and records it as aborted.",  # noqa: E501
    "run_now": "The job is due now: the next free worker takes it.",
}


def _queue(request: Request) -> str:
    queue: str = request.path_params["queue"]
    check_queue(queue)
    return queue


def _job_id(request: Request) -> str:
    job_id: str = request.path_params["job_id"]
    if not job_id or len(job_id) > MAX_JOB_ID_CHARS or "\x00" in job_id:
        raise Invalid("not a valid job id")
    return job_id


def _field(form: FormData, name: str, *, max_length: int = REASON_MAX_CHARS) -> str:
    raw = form.get(name)
    value = raw.strip() if isinstance(raw, str) else ""
    if len(value) > max_length or "\x00" in value:
        raise Invalid(f"{name} must be at most {max_length} characters")
    return value


def _functions(queue: str) -> list[str]:
    return [spec.name for spec in jobs_on(queue)]


def _function(queue: str, raw: str | None) -> str:
    if raw not in _functions(queue):
        raise Invalid(f"function must be one of {', '.join(_functions(queue))}")
    return raw


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done", "")
    count = request.query_params.get("count", "")
    if done == "bulk_cancelled" and count.isdigit():
        return f"{int(count):,} jobs cancelled, each kept in the dead letters as cancelled (resolved)."
    return NOTICES.get(done)


def _jobs_url(queue: str, state: str, **extra: str) -> str:
    return f"/console/queues/{queue}/jobs?" + urlencode({"state": state, **extra})


# -- pages (GET) ----------------------------------------------------------------------------------


async def live_jobs(request: Request, user: ConsoleUser) -> Response:
    queue = _queue(request)
    state_name = request.query_params.get("state") or "queued"
    if state_name not in JOB_STATES:
        raise Invalid(f"state must be one of {', '.join(JOB_STATES)}")
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and len(cursor) > 512:
        raise Invalid("cursor is not one this page made")
    ops = app_state(request)
    page = await list_live_jobs(
        ops.redis,
        queue=queue,
        state=state_name,
        cursor=cursor,
        limit=PAGE_SIZE,
        job_policies=ops.settings.job_policies,
    )
    context: dict[str, Any] = {
        "queue": queue,
        "queues": JOB_QUEUES,
        "state": state_name,
        "states": JOB_STATES,
        "page": page,
        "first_page": cursor is None,
        "next_url": _jobs_url(queue, state_name, cursor=page.next_cursor) if page.next_cursor else None,
        "functions": _functions(queue),
        "paused": await read_pause(ops.redis, queue),
        "actions": ACTION_STATES,
        "notice": _notice(request),
    }
    return render(request, "jobs.html", context, user=user)


async def live_job(request: Request, user: ConsoleUser) -> Response:
    queue, job_id = _queue(request), _job_id(request)
    ops = app_state(request)
    job = await get_live_job(ops.redis, queue=queue, job_id=job_id, job_policies=ops.settings.job_policies)
    context = {"job": job, "actions": ACTION_STATES, "notice": _notice(request)}
    return render(request, "job.html", context, user=user)


async def queue_confirm(request: Request, user: ConsoleUser) -> Response:
    """Before a pause or resume: the queue's current state and a reason field."""
    action = request.path_params["action"]
    if action not in QUEUE_ACTIONS:
        raise NotFound("no such queue action")
    queue: str = request.path_params["queue"]
    check_pausable(queue)
    paused = await read_pause(app_state(request).redis, queue)
    context = {"kind": "queue", "action": action, "queue": queue, "paused": paused}
    return render(request, "control_confirm.html", context, user=user)


async def job_confirm(request: Request, user: ConsoleUser) -> Response:
    """Before a cancel, abort or run now: the job as it is now and a reason field."""
    action = request.path_params["action"]
    if action not in JOB_ACTIONS:
        raise NotFound("no such job action")
    queue, job_id = _queue(request), _job_id(request)
    ops = app_state(request)
    job = await get_live_job(ops.redis, queue=queue, job_id=job_id, job_policies=ops.settings.job_policies)
    context = {"kind": "job", "action": action, "queue": queue, "job": job, "applies": ACTION_STATES[action]}
    return render(request, "control_confirm.html", context, user=user)


async def bulk_confirm(request: Request, user: ConsoleUser) -> Response:
    """Before a bulk cancel: how many waiting jobs of the function it will take."""
    queue = _queue(request)
    function = _function(queue, request.query_params.get("function"))
    waiting = await count_waiting(app_state(request).redis, queue=queue, function=function)
    context = {"kind": "bulk", "action": "cancel", "queue": queue, "waiting": waiting}
    return render(request, "control_confirm.html", context, user=user)


# -- actions (POST) -------------------------------------------------------------------------------


async def queue_action(request: Request, user: ConsoleUser) -> Response:
    action = request.path_params["action"]
    if action not in QUEUE_ACTIONS:
        raise NotFound("no such queue action")
    queue: str = request.path_params["queue"]
    reason = _field(await request.form(), "reason")
    ops, who = app_state(request), actor(request, user)
    use_case = pause_queue if action == "pause" else resume_queue
    async with ops.db.pool.acquire() as conn:
        await use_case(
            conn, ops.redis, queue=queue, reason=reason, actor=who.name, actor_user_id=who.user_id, ip=who.ip
        )
    return redirect(f"/console?done={'paused' if action == 'pause' else 'resumed'}")


async def job_action(request: Request, user: ConsoleUser) -> Response:
    action = request.path_params["action"]
    if action not in JOB_ACTIONS:
        raise NotFound("no such job action")
    queue, job_id = _queue(request), _job_id(request)
    form = await request.form()
    reason = _field(form, "reason")
    back = _field(form, "state", max_length=20)
    ops, who = app_state(request), actor(request, user)
    use_case = {"cancel": cancel_job, "abort": abort_job, "run-now": run_job_now}[action]
    async with ops.db.pool.acquire() as conn:
        await use_case(
            conn, ops.redis, queue=queue, job_id=job_id, reason=reason,
            actor=who.name, actor_user_id=who.user_id, ip=who.ip,
        )  # fmt: skip
    if action == "cancel":
        return redirect(_jobs_url(queue, back if back in JOB_STATES else "queued", done="job_cancelled"))
    if action == "abort":
        return redirect(_jobs_url(queue, "running", done="abort_requested"))
    return redirect(_jobs_url(queue, "queued", done="run_now"))


async def bulk_action(request: Request, user: ConsoleUser) -> Response:
    queue = _queue(request)
    form = await request.form()
    function = _function(queue, _field(form, "function", max_length=200))
    confirm = _field(form, "confirm", max_length=6)
    if not confirm.isdigit() or not 1 <= int(confirm) <= BULK_CANCEL_MAX:
        raise Invalid("the confirmation count is missing: open the confirmation page again")
    ops, who = app_state(request), actor(request, user)
    async with ops.db.pool.acquire() as conn:
        result = await bulk_cancel(
            conn, ops.redis, queue=queue, function=function, reason=_field(form, "reason"),
            max_jobs=int(confirm), actor=who.name, actor_user_id=who.user_id, ip=who.ip,
        )  # fmt: skip
    return redirect(_jobs_url(queue, "queued", done="bulk_cancelled", count=str(result.cancelled)))

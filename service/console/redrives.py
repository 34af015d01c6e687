"""Console pages for redrive tasks (issue 19): the list, one task's live progress, its actions.

The task page polls its progress fragment every second (htmx; without JS the page is still
complete, just not live): a progress bar, sent / succeeded / failed again / in flight / remaining,
the rate achieved against the rate set, the ETA, the state and its reason. Pause, resume and
cancel (admins, CSRF-checked by ``console_view``) call the same ``shared`` use case as the API.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.console.render import redirect, render
from service.console.security import ConsoleUser
from service.console.views import actor, parse_uuid_param
from service.state import app_state
from shared.infra.errors import NotFound
from shared.jobs.pause_state import read_pauses
from shared.redrive_tasks.control import change_state, get_task, list_tasks, pending_queues
from shared.redrive_tasks.model import RedriveTask

NOTICES = {"created": "Redrive task created: it starts within a few seconds.", "pause": "Task paused.",
           "resume": "Task resumed.", "cancel": "Task cancelled."}  # fmt: skip
ACTIONS = {"pause": ("pending", "running"), "resume": ("paused", "tripped"),
           "cancel": ("pending", "running", "paused", "tripped")}  # fmt: skip


def progress(task: RedriveTask) -> dict[str, Any]:
    done = task.succeeded + task.failed_again + task.skipped
    return {
        "task": task,
        "done_pct": round(100 * done / task.total, 1) if task.total else 100.0,
        "sent_pct": round(100 * (task.sent + task.skipped) / task.total, 1) if task.total else 100.0,
        "actions": [name for name, sources in ACTIONS.items() if task.state in sources],
        "live": task.state in ("pending", "running", "paused", "tripped") or task.in_flight > 0,
    }


async def _context(request: Request) -> dict[str, Any]:
    task_id = parse_uuid_param(request.path_params["task_id"])
    state = app_state(request)
    async with state.db.pool.acquire() as conn:
        task = await get_task(conn, task_id)
        queues = await pending_queues(conn, task_id) if task.remaining else []
    pauses = await read_pauses(state.redis, queues) if queues else {}
    return progress(task) | {"paused_queues": sorted(q for q, p in pauses.items() if p is not None)}


async def task_list(request: Request, user: ConsoleUser) -> Response:
    async with app_state(request).db.pool.acquire() as conn:
        page = await list_tasks(conn, limit=50, cursor=request.query_params.get("cursor") or None)
    return render(request, "redrives.html", {"page": page}, user=user)


async def task_page(request: Request, user: ConsoleUser) -> Response:
    context = await _context(request)
    context["notice"] = NOTICES.get(request.query_params.get("done", ""))
    return render(request, "redrive.html", context, user=user)


async def task_progress(request: Request, user: ConsoleUser) -> Response:
    return render(request, "_redrive_progress.html", await _context(request), user=user)


async def task_action(request: Request, user: ConsoleUser) -> Response:
    task_id = parse_uuid_param(request.path_params["task_id"])
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound("no such task action")
    await change_state(app_state(request).db.pool, task_id, action, actor(request, user))
    return redirect(f"/console/redrives/{task_id}?done={action}")

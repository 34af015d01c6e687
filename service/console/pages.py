"""Console pages (GET): overview, failure groups, DLQ list, entry detail, audit log, cron runs.

Thin like the API routes: parse the query → call ``shared`` → render. Every read is bounded
(keyset pages, counters from ``dlq_groups``, index range scans), so a page costs the same with
a million DLQ rows as with ten (``python -m bench.console``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.console.render import render
from service.console.security import ConsoleUser
from service.console.views import is_dependency_error, parse_uuid_param, unavailable_page
from service.state import app_state
from shared import audit
from shared.dlq.browse import (
    DlqFilter,
    cursor_secret,
    get_entry,
    get_group,
    group_entries,
    lineage,
    list_entries,
)
from shared.dlq.spool import spool_size
from shared.infra.errors import Invalid, NotFound
from shared.jobs.cron_runs import latest_runs
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import ALL_QUEUES, JOB_QUEUES
from shared.jobs.stats import collect_queue_stats, export_queue_gauges

DLQ_PAGE_SIZE = 50
GROUPS_PAGE_SIZE = 100
MAX_GROUP_PAGES = 100
AUDIT_PAGE_SIZE = 50
MAX_FILTER_LENGTH = 200
NOTICES = {
    "retried": "Retry enqueued. The entry is resolved as retried.",
    "resolved": "Entry resolved.",
    "cron": "Run enqueued on the scheduler queue.",
    "paused": "Queue paused: its workers start no new job; running jobs finish.",
    "resumed": "Queue resumed: its workers start jobs again.",
}


def _param(request: Request, name: str, *, max_length: int = MAX_FILTER_LENGTH) -> str | None:
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    if len(value) > max_length or "\x00" in value:
        raise Invalid(f"{name} must be at most {max_length} characters")
    return value


def _queue(request: Request) -> str | None:
    queue = _param(request, "queue")
    if queue is not None and queue not in ALL_QUEUES:
        raise Invalid(f"queue must be one of {', '.join(ALL_QUEUES)}")
    return queue


def _state(request: Request, default: str) -> tuple[str, bool | None]:
    state = _param(request, "state") or default
    if state not in ("unresolved", "resolved", "all"):
        raise Invalid("state must be unresolved, resolved or all")
    return state, {"unresolved": False, "resolved": True, "all": None}[state]


def _notice(request: Request) -> str | None:
    done = request.query_params.get("done", "")
    if done in NOTICES:
        return NOTICES[done]
    count = request.query_params.get("count", "")
    if done in ("group_retried", "group_resolved") and count.isdigit():
        verb = "re-enqueued" if done == "group_retried" else "resolved"
        return f"{int(count):,} entries {verb}."
    return None


async def _live(request: Request) -> dict[str, Any]:
    state = app_state(request)
    stats, beats, spooled = await asyncio.gather(
        collect_queue_stats(state.db, state.redis),
        read_heartbeats(state.redis),
        spool_size(state.redis),
    )
    export_queue_gauges(stats, state.metrics)
    now = time.time()
    beats = sorted(beats, key=lambda b: (b.queue, -b.last_beat))
    workers = [{"beat": b, "age": b.age_seconds(now)} for b in beats]
    return {"queues": stats, "workers": workers, "spool_size": spooled, "job_queues": JOB_QUEUES}


async def overview(request: Request, user: ConsoleUser) -> Response:
    return render(request, "overview.html", {**await _live(request), "notice": _notice(request)}, user=user)


async def overview_live(request: Request, user: ConsoleUser) -> Response:
    """The self-refreshing part of the overview (htmx polls it; without JS the page reloads)."""
    try:
        context = await _live(request)
    except Exception as exc:
        if not is_dependency_error(exc):
            raise
        return await unavailable_page(request, exc, user, partial=True)
    return render(request, "_live.html", context, user=user)


async def groups(request: Request, user: ConsoleUser) -> Response:
    queue = _queue(request)
    state_name, resolved = _state(request, "unresolved")
    raw_page = _param(request, "page", max_length=3) or "1"
    if not raw_page.isdigit() or not 1 <= int(raw_page) <= MAX_GROUP_PAGES:
        raise Invalid(f"page must be between 1 and {MAX_GROUP_PAGES}")
    page = int(raw_page)
    # Pages of the groups ordered by size: the counters table is O(groups), so reading the first
    # page * size + 1 rows and rendering only the last page costs little; rendering is the cost.
    async with app_state(request).db.pool.acquire() as conn:
        found = await group_entries(conn, queue=queue, resolved=resolved, limit=page * GROUPS_PAGE_SIZE + 1)
    return render(
        request,
        "groups.html",
        {
            "groups": found[(page - 1) * GROUPS_PAGE_SIZE : page * GROUPS_PAGE_SIZE],
            "page": page,
            "more": len(found) > page * GROUPS_PAGE_SIZE,
            "queue": queue,
            "state": state_name,
            "queues": ALL_QUEUES,
            "notice": _notice(request),
        },
        user=user,
    )


async def group_confirm(request: Request, user: ConsoleUser) -> Response:
    """The confirmation before a group action: how many entries it will touch."""
    action = request.path_params["action"]
    if action not in ("retry", "resolve"):
        raise NotFound("no such group action")
    queue, fingerprint = request.path_params["queue"], request.path_params["fingerprint"]
    async with app_state(request).db.pool.acquire() as conn:
        group = await get_group(conn, queue=queue, fingerprint=fingerprint)
    return render(request, "group_confirm.html", {"group": group, "action": action}, user=user)


async def dlq_list(request: Request, user: ConsoleUser) -> Response:
    state = app_state(request)
    state_name, resolved = _state(request, "unresolved")
    filters = DlqFilter(
        queue=_queue(request),
        resolved=resolved,
        fingerprint=_param(request, "fingerprint", max_length=64),
        q=_param(request, "q"),
    )
    cursor = _param(request, "cursor", max_length=512)
    async with state.db.pool.acquire() as conn:
        page = await list_entries(
            conn,
            filters,
            limit=DLQ_PAGE_SIZE,
            cursor=cursor,
            secret=cursor_secret(state.settings.mfa_encryption_key),
        )
    return render(
        request,
        "dlq.html",
        {
            "page": page,
            "filters": filters,
            "state": state_name,
            "queues": ALL_QUEUES,
            "first_page": cursor is None,
        },
        user=user,
    )


async def dlq_entry(request: Request, user: ConsoleUser) -> Response:
    entry_id = parse_uuid_param(request.path_params["entry_id"])
    async with app_state(request).db.pool.acquire() as conn:
        entry = await get_entry(conn, entry_id)
        chain = await lineage(conn, entry_id)
        history = await audit.for_target(conn, target_type="dlq_entry", target_id=str(entry_id))
    return render(
        request,
        "entry.html",
        {
            "entry": entry,
            "lineage": chain,
            "history": history,
            "notice": _notice(request),
            "trace_url": app_state(request).settings.trace_url(entry.trace_id),
        },
        user=user,
    )


async def audit_log(request: Request, user: ConsoleUser) -> Response:
    before = _param(request, "before", max_length=20)
    if before is not None and not before.isdigit():
        raise Invalid("before must be an audit row id")
    action, actor_name = _param(request, "action"), _param(request, "actor")
    async with app_state(request).db.pool.acquire() as conn:
        rows = await audit.page(
            conn,
            action=action,
            actor=actor_name,
            before_id=int(before) if before else None,
            limit=AUDIT_PAGE_SIZE + 1,
        )
    older = rows[AUDIT_PAGE_SIZE - 1].id if len(rows) > AUDIT_PAGE_SIZE else None
    return render(
        request,
        "audit.html",
        {"rows": rows[:AUDIT_PAGE_SIZE], "older": older, "action": action, "actor": actor_name},
        user=user,
    )


async def cron(request: Request, user: ConsoleUser) -> Response:
    async with app_state(request).db.pool.acquire() as conn:
        runs = await latest_runs(conn)
    return render(request, "cron.html", {"runs": runs, "notice": _notice(request)}, user=user)

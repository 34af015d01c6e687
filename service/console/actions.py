"""Console actions (POST, admins only, CSRF-checked by ``console_view``): retry, resolve, group
retry/resolve, run a cron job now. Each calls the same ``shared`` use case as the API, so it is
exactly-once and audited the same way, then redirects (303) to the page that shows the result.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from service.console.render import redirect
from service.console.security import ConsoleUser
from service.console.views import actor, parse_uuid_param
from service.state import app_state
from shared import audit
from shared.dlq.redrive import MAX_BULK, resolve_entry, resolve_group, retry_entry
from shared.infra.errors import Invalid, NotFound
from shared.jobs.cron_runs import CRON_JOB_NAMES, enqueue_cron_run, manual_run_job_id
from shared.redrive_tasks.model import DEFAULT_MAX_IN_FLIGHT, DEFAULT_RATE_PER_SECOND
from shared.redrive_tasks.selection import SelectionFilter, TaskSpec, create_task

MAX_NOTE_LENGTH = 2000
# "Resolve all…" walks the whole group in batches of MAX_BULK (each its own transaction, each
# entry exactly once); this bounds one click at 50,000 entries.
MAX_GROUP_BATCHES = 50


async def _note(request: Request) -> str | None:
    raw = (await request.form()).get("note")
    if raw is None or not isinstance(raw, str) or not raw.strip():
        return None
    if len(raw) > MAX_NOTE_LENGTH or "\x00" in raw:
        raise Invalid(f"the note must be at most {MAX_NOTE_LENGTH} characters")
    return raw.strip()


async def retry(request: Request, user: ConsoleUser) -> Response:
    entry_id = parse_uuid_param(request.path_params["entry_id"])
    state = app_state(request)
    await retry_entry(state.db.pool, state.redis, state.metrics, entry_id, actor(request, user))
    return redirect(f"/console/dlq/{entry_id}?done=retried")


async def resolve(request: Request, user: ConsoleUser) -> Response:
    entry_id = parse_uuid_param(request.path_params["entry_id"])
    note = await _note(request)
    await resolve_entry(app_state(request).db.pool, entry_id, actor(request, user), note)
    return redirect(f"/console/dlq/{entry_id}?done=resolved")


async def group_action(request: Request, user: ConsoleUser) -> Response:
    """ "Retry all…" creates a redrive task over the whole group (issue 19: 10 jobs/s, 20 in flight,
    breaker on) and shows its page; "Resolve all…" resolves the group in batches of MAX_BULK."""
    action = request.path_params["action"]
    if action not in ("retry", "resolve"):
        raise NotFound("no such group action")
    queue, fingerprint = request.path_params["queue"], request.path_params["fingerprint"]
    state = app_state(request)
    who = actor(request, user)
    if action == "retry":
        spec = TaskSpec(
            name=f"retry all {queue}/{fingerprint}", reason=await _note(request) or "",
            via="console.group_retry",
            filter=SelectionFilter(queue=queue, fingerprint=fingerprint),
            rate_per_second=DEFAULT_RATE_PER_SECOND, max_in_flight=DEFAULT_MAX_IN_FLIGHT,
        )  # fmt: skip
        task = await create_task(state.db.pool, spec, who)
        return redirect(f"/console/redrives/{task.id}?done=created")
    note = await _note(request)
    total = 0
    for _ in range(MAX_GROUP_BATCHES):
        done = len(await resolve_group(state.db.pool, who, queue=queue, fingerprint=fingerprint, note=note))
        total += done
        if done < MAX_BULK:
            break
    return redirect(f"/console/groups?queue={quote(queue)}&done=group_resolved&count={total}")


async def run_cron(request: Request, user: ConsoleUser) -> Response:
    """Enqueue one run of a cron job now; the audit row commits only if the enqueue succeeded."""
    name = request.path_params["name"]
    if name not in CRON_JOB_NAMES:
        raise Invalid(f"cron job must be one of {', '.join(CRON_JOB_NAMES)}")
    state = app_state(request)
    who = actor(request, user)
    job_id = manual_run_job_id(name)
    async with state.db.pool.acquire() as conn, conn.transaction():
        await audit.record(
            conn,
            actor=who.name,
            actor_user_id=who.user_id,
            ip=who.ip,
            action="cron.run_requested",
            target_type="cron_job",
            target_id=name,
            metadata={"job_id": job_id},
        )
        await enqueue_cron_run(state.redis, name, job_id=job_id, metrics=state.metrics)
    return redirect("/console/cron?done=cron")

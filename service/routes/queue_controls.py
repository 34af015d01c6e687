"""``POST /api/v1/admin/queues/{queue}/pause`` and ``…/resume``: stop and restart a queue's workers.

Thin: decode → ``shared.controls.pause`` (exactly once via Redis ``SET NX`` / compare-and-delete,
audited with actor, reason, target, ip and request id) → the state. Admin only: ``support`` gets
403 like on every admin API route (it sees the pause state in ``GET /api/v1/admin/queues`` and on
the console overview). ``scheduler`` is refused (400 ``queue_not_pausable``): cron and the DLQ
spool drain run there, so the path takes every queue name and the refusal says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from msgspec import Meta, Struct

from service.contract import Call, operation
from shared.controls.pause import REASON_MAX_CHARS, pause_queue, resume_queue
from shared.jobs.pause_state import PauseState
from shared.jobs.queues import QueueName

BASE = "/api/v1/admin/queues/{queue}"
ADMIN: dict[str, Any] = {"tags": ("queues",), "auth": "admin"}
ERRORS = (400, 401, 403, 409, 413, 503)

Reason = Annotated[str, Meta(max_length=REASON_MAX_CHARS, description="why (shown on the overview, audited)")]


class QueueRef(Struct, forbid_unknown_fields=True):
    queue: QueueName


class PauseBody(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=REASON_MAX_CHARS, description="why; required")]


class ResumeBody(Struct, forbid_unknown_fields=True):
    reason: Reason | None = None


@dataclass(frozen=True, slots=True)
class QueuePaused:
    queue: str
    paused: PauseState


@dataclass(frozen=True, slots=True)
class QueueResumed:
    queue: str
    resumed_by: str
    resumed_at: datetime
    reason: str
    ended: Annotated[PauseState, Meta(description="the pause that ended")]


def _who(call: Call[Any, Any]) -> dict[str, Any]:
    principal = call.principal
    return {"actor": principal.email, "actor_user_id": principal.user_id, "ip": call.ip}


@operation("POST", BASE + "/pause", params=QueueRef, body=PauseBody, response=QueuePaused,
           operation_id="pauseQueue",
           summary="Pause a job queue: its workers on every host stop starting jobs within about 1 s",
           description="Running jobs finish; enqueueing keeps working; queued jobs burn no try. 409 "
                       "when already paused; 400 for scheduler (cron and the DLQ spool drain).",
           response_description="the pause (who, why, since)", errors=ERRORS, **ADMIN)  # fmt: skip
async def pause(call: Call[QueueRef, PauseBody]) -> QueuePaused:
    queue = call.params.queue
    async with call.state.db.pool.acquire() as conn:
        state = await pause_queue(conn, call.state.redis, queue=queue, reason=call.body.reason, **_who(call))
    return QueuePaused(queue, state)


@operation("POST", BASE + "/resume", params=QueueRef, body=ResumeBody, response=QueueResumed,
           body_required=False, operation_id="resumeQueue",
           summary="Resume a paused job queue (409 when it is not paused)",
           response_description="the pause that ended", errors=ERRORS, **ADMIN)  # fmt: skip
async def resume(call: Call[QueueRef, ResumeBody]) -> QueueResumed:
    queue = call.params.queue
    async with call.state.db.pool.acquire() as conn:
        ended = await resume_queue(conn, call.state.redis, queue=queue, reason=call.body.reason, **_who(call))
    note = (call.body.reason or "").strip()
    return QueueResumed(queue, call.principal.email, datetime.now(UTC), note, ended)


OPERATIONS = [pause, resume]

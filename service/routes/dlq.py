"""DLQ admin routes: list, groups, detail, retry, resolve, bulk redrive, rejected records.

Thin: decode (``service.contract``) → call ``shared.dlq.browse`` / ``shared.dlq.redrive`` → return
the typed answer. Every state change is audited in ``shared`` within its own transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct
from redis.exceptions import RedisError

from service.contract import Call, NoBody, NoParams, operation
from shared.dlq.browse import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    DlqEntryDetail,
    DlqFilter,
    DlqGroup,
    DlqPage,
    cursor_secret,
    get_entry,
    group_entries,
    list_entries,
)
from shared.dlq.redrive import DEFAULT_BULK, MAX_BULK, Actor, resolve_entry, retry_entry
from shared.dlq.rejects import MAX_LISTED, newest_rejected
from shared.infra.errors import DependencyUnavailable, Invalid
from shared.jobs.queues import QueueName
from shared.redrive_tasks.model import DEFAULT_MAX_IN_FLIGHT, DEFAULT_RATE_PER_SECOND
from shared.redrive_tasks.selection import SelectionFilter, TaskSpec, create_task, item_job_ids

BASE = "/api/v1/admin/queues/dlq"
BULK_DESCRIPTION = (
    "Creates a redrive task (issue 19) instead of pushing everything at once: 10 jobs/s, at most 20 "
    "in flight, the breaker on (see README 'Redrive tasks'). Entries already waiting in a live task are "
    "not taken again; nothing to take is a 400 empty_selection. A single entry's retry stays immediate."
)
ADMIN: dict[str, Any] = {"tags": ("dlq",), "auth": "admin"}
READ_ERRORS = (400, 401, 403, 503)

Fingerprint = Annotated[str, Meta(min_length=1, max_length=64)]
MAX_NOTE_LENGTH = 2000


class DlqQuery(Struct, forbid_unknown_fields=True):
    queue: QueueName | None = None
    resolved: bool | None = None
    fingerprint: Fingerprint | None = None
    q: Annotated[str, Meta(min_length=1, max_length=200, description="searches error messages")] | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT
    cursor: str | None = None


class GroupsQuery(Struct, forbid_unknown_fields=True):
    queue: QueueName | None = None
    resolved: bool | None = False


class RejectedQuery(Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=MAX_LISTED)] = 20


class EntryRef(Struct, forbid_unknown_fields=True):
    entry_id: uuid.UUID


class ResolveBody(Struct, forbid_unknown_fields=True):
    note: Annotated[str, Meta(max_length=MAX_NOTE_LENGTH)] | None = None


class BulkRetryBody(Struct, forbid_unknown_fields=True):
    """Either ``ids`` or both ``queue`` and ``fingerprint``."""

    ids: Annotated[list[uuid.UUID], Meta(min_length=1, max_length=MAX_BULK)] | None = None
    queue: QueueName | None = None
    fingerprint: Fingerprint | None = None
    max: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_BULK,
                description="at most this many entries (default: all ids, or 100 by fingerprint)",
            ),
        ]
        | None
    ) = None


@dataclass(frozen=True, slots=True)
class DlqGroupList:
    groups: list[DlqGroup]


@dataclass(frozen=True, slots=True)
class RetryAccepted:
    job_id: str


@dataclass(frozen=True, slots=True)
class BulkRetryAccepted:
    """A redrive task took the entries; it sends them at its rate (``/api/v1/admin/redrives``)."""

    task_id: Annotated[uuid.UUID, Meta(description="GET /api/v1/admin/redrives/{task_id} for progress")]
    retried: Annotated[int, Meta(description="entries handed to the task (each redriven at most once)")]
    job_ids: Annotated[list[str], Meta(description="the job id each entry runs under when its turn comes")]
    rate_per_second: float
    max_in_flight: int


class RejectedRecord(Struct, omit_defaults=True):
    rejected_at: str | None = None
    error: str | None = None
    record: Any = None
    record_truncated: Annotated[
        bool,
        Meta(description="args, kwargs and stack trace left out of this listing (over 64 KiB); in Redis"),
    ] = False


@dataclass(frozen=True, slots=True)
class RejectedList:
    total: Annotated[int, Meta(ge=0)]
    items: list[RejectedRecord]


def _actor(call: Call[Any, Any]) -> Actor:
    return Actor(name=call.principal.email, user_id=call.principal.user_id, ip=call.ip)


@operation("GET", BASE, params=DlqQuery, body=NoBody, response=DlqPage, operation_id="listDlqEntries",
           summary="List DLQ entries, newest first (keyset pagination)", response_description="a page",
           errors=READ_ERRORS, **ADMIN)  # fmt: skip
async def list_dlq(call: Call[DlqQuery, NoBody]) -> DlqPage:
    query = call.params
    filters = DlqFilter(queue=query.queue, resolved=query.resolved, fingerprint=query.fingerprint, q=query.q)
    secret = cursor_secret(call.state.settings.mfa_encryption_key)
    async with call.state.db.pool.acquire() as conn:
        return await list_entries(conn, filters, limit=query.limit, cursor=query.cursor, secret=secret)


@operation("GET", f"{BASE}/groups", params=GroupsQuery, body=NoBody, response=DlqGroupList,
           operation_id="listDlqGroups", summary="Failures grouped by fingerprint (unresolved by default)",
           response_description="groups", errors=READ_ERRORS, **ADMIN)  # fmt: skip
async def dlq_groups(call: Call[GroupsQuery, NoBody]) -> DlqGroupList:
    async with call.state.db.pool.acquire() as conn:
        groups = await group_entries(conn, queue=call.params.queue, resolved=call.params.resolved)
    return DlqGroupList(groups)


@operation("GET", f"{BASE}/rejected", params=RejectedQuery, body=NoBody, response=RejectedList,
           operation_id="listRejectedDlqRecords",
           summary="DLQ records Postgres refused (kept in Redis for an operator), newest first",
           response_description="the newest rejected records and how many there are", errors=READ_ERRORS,
           **ADMIN)  # fmt: skip
async def dlq_rejected(call: Call[RejectedQuery, NoBody]) -> RejectedList:
    """Records Postgres refused (``shared.dlq.rejects``), newest first, with the refusal."""
    try:
        total, entries = await newest_rejected(call.state.redis, call.params.limit)
    except (OSError, TimeoutError, RedisError) as exc:
        raise DependencyUnavailable("redis", "the rejected-record list cannot be read") from exc
    return RejectedList(total, msgspec.convert(entries, list[RejectedRecord]))


@operation("POST", f"{BASE}/retry", params=NoParams, body=BulkRetryBody, response=BulkRetryAccepted,
           status=202, operation_id="bulkRetryDlqEntries",
           summary="Bulk redrive by ids or by queue + fingerprint: a redrive task at the default rate",
           description=BULK_DESCRIPTION, response_description="the task that will redrive them",
           errors=(400, 401, 403, 413, 503), **ADMIN)  # fmt: skip
async def dlq_bulk_retry(call: Call[NoParams, BulkRetryBody]) -> BulkRetryAccepted:
    body = call.body
    by_filter = body.queue is not None or body.fingerprint is not None
    if (body.ids is not None) == by_filter or (
        by_filter and (body.queue is None or body.fingerprint is None)
    ):
        raise Invalid('give either "ids" or both "queue" and "fingerprint"')
    selection = (
        None if body.ids is not None else SelectionFilter(queue=body.queue, fingerprint=body.fingerprint)
    )
    limit = body.max or (MAX_BULK if body.ids is not None else DEFAULT_BULK)
    spec = TaskSpec(
        name=f"bulk retry {body.fingerprint or f'{len(body.ids or [])} ids'}",
        reason="POST /api/v1/admin/queues/dlq/retry",
        ids=body.ids, filter=selection, rate_per_second=DEFAULT_RATE_PER_SECOND,
        max_in_flight=DEFAULT_MAX_IN_FLIGHT, limit=limit, via="dlq.bulk_retry",
    )  # fmt: skip
    task = await create_task(call.state.db.pool, spec, _actor(call))
    async with call.state.db.pool.acquire() as conn:
        job_ids = await item_job_ids(conn, task.id, MAX_BULK)
    return BulkRetryAccepted(task.id, task.total, job_ids, task.rate_per_second, task.max_in_flight)


@operation("GET", BASE + "/{entry_id}", params=EntryRef, body=NoBody, response=DlqEntryDetail,
           operation_id="getDlqEntry", summary="One DLQ entry with payload and stack trace",
           response_description="the entry", errors=(400, 401, 403, 404, 503), **ADMIN)  # fmt: skip
async def dlq_detail(call: Call[EntryRef, NoBody]) -> DlqEntryDetail:
    async with call.state.db.pool.acquire() as conn:
        return await get_entry(conn, call.params.entry_id)


@operation("POST", BASE + "/{entry_id}/retry", params=EntryRef, body=NoBody, response=RetryAccepted,
           status=202, operation_id="retryDlqEntry",
           summary="Re-enqueue the original call on its queue, exactly once",
           response_description="re-enqueued", errors=(400, 401, 403, 404, 409, 413, 503),
           **ADMIN)  # fmt: skip
async def dlq_retry(call: Call[EntryRef, NoBody]) -> RetryAccepted:
    state = call.state
    job_id = await retry_entry(state.db.pool, state.redis, state.metrics, call.params.entry_id, _actor(call))
    return RetryAccepted(job_id)


@operation("POST", BASE + "/{entry_id}/resolve", params=EntryRef, body=ResolveBody, response=DlqEntryDetail,
           body_required=False, operation_id="resolveDlqEntry",
           summary="Mark resolved by hand, with an optional note", response_description="the resolved entry",
           errors=(400, 401, 403, 404, 409, 413, 503), **ADMIN)  # fmt: skip
async def dlq_resolve(call: Call[EntryRef, ResolveBody]) -> DlqEntryDetail:
    return await resolve_entry(call.state.db.pool, call.params.entry_id, _actor(call), call.body.note)


# Starlette matches in this order: the fixed paths before ``{entry_id}``.
OPERATIONS = [list_dlq, dlq_groups, dlq_rejected, dlq_bulk_retry, dlq_detail, dlq_retry, dlq_resolve]

"""DLQ admin routes: list, groups, detail, retry, resolve, bulk redrive.

Thin: validate → call ``shared.dlq.browse`` / ``shared.dlq.redrive`` → shape JSON. Every state
change is audited in ``shared`` within its own transaction.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.guard import Principal, admin_endpoint
from service.openapi_schemas import SECURITY, error_responses
from service.state import AppState, app_state
from service.validation import (
    client_ip,
    int_in_range,
    json_int_in_range,
    json_object,
    optional_bool,
    query_params,
    reject_unknown,
    uuid_value,
)
from shared.dlq.browse import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    DlqFilter,
    cursor_secret,
    get_entry,
    group_entries,
    list_entries,
    parse_entry_id,
)
from shared.dlq.reasons import DLQ_REASONS
from shared.dlq.redrive import DEFAULT_BULK, MAX_BULK, Actor, bulk_retry, resolve_entry, retry_entry
from shared.dlq.rejects import MAX_LISTED, newest_rejected
from shared.infra.errors import DependencyUnavailable, Invalid

BASE = "/api/v1/admin/queues/dlq"


def _actor(request: Request, principal: Principal) -> Actor:
    return Actor(name=principal.email, user_id=principal.user_id, ip=client_ip(request))


def _secret(state: AppState) -> bytes:
    return cursor_secret(state.settings.mfa_encryption_key)


async def list_dlq(request: Request, principal: Principal) -> Response:
    params = query_params(request, ("queue", "resolved", "fingerprint", "q", "limit", "cursor"))
    filters = DlqFilter(
        queue=params.get("queue"),
        resolved=optional_bool(params.get("resolved"), "resolved"),
        fingerprint=params.get("fingerprint"),
        q=params.get("q"),
    )
    limit = int_in_range(params.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    state = app_state(request)
    async with state.db.pool.acquire() as conn:
        page = await list_entries(
            conn, filters, limit=limit, cursor=params.get("cursor"), secret=_secret(state)
        )
    return JSONResponse({"items": [e.to_json() for e in page.items], "next_cursor": page.next_cursor})


async def dlq_groups(request: Request, principal: Principal) -> Response:
    params = query_params(request, ("queue", "resolved"))
    resolved = optional_bool(params.get("resolved", "false"), "resolved")
    state = app_state(request)
    async with state.db.pool.acquire() as conn:
        groups = await group_entries(conn, queue=params.get("queue"), resolved=resolved)
    return JSONResponse({"groups": [g.to_json() for g in groups]})


async def dlq_detail(request: Request, principal: Principal) -> Response:
    query_params(request, ())
    entry_id = parse_entry_id(request.path_params["entry_id"])
    async with app_state(request).db.pool.acquire() as conn:
        entry = await get_entry(conn, entry_id)
    return JSONResponse(entry.to_json(detail=True))


async def dlq_retry(request: Request, principal: Principal) -> Response:
    entry_id = parse_entry_id(request.path_params["entry_id"])
    reject_unknown((await json_object(request, allow_empty=True)).keys(), (), "field(s)")
    state = app_state(request)
    job_id = await retry_entry(
        state.db.pool, state.redis, state.metrics, entry_id, _actor(request, principal)
    )
    return JSONResponse({"job_id": job_id}, status_code=202)


async def dlq_resolve(request: Request, principal: Principal) -> Response:
    entry_id = parse_entry_id(request.path_params["entry_id"])
    body = await json_object(request, allow_empty=True)
    reject_unknown(body.keys(), ("note",), "field(s)")
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise Invalid("note must be a string")
    entry = await resolve_entry(app_state(request).db.pool, entry_id, _actor(request, principal), note)
    return JSONResponse(entry.to_json(detail=True))


async def dlq_bulk_retry(request: Request, principal: Principal) -> Response:
    body = await json_object(request)
    reject_unknown(body.keys(), ("ids", "queue", "fingerprint", "max"), "field(s)")
    raw_ids = body.get("ids")
    ids = None
    if raw_ids is not None:
        if not isinstance(raw_ids, list):
            raise Invalid("ids must be a list of UUIDs")
        ids = [uuid_value(value, "ids[]") for value in raw_ids]
    for name in ("queue", "fingerprint"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise Invalid(f"{name} must be a string")
    max_entries = json_int_in_range(
        body.get("max"), "max", 1, MAX_BULK, DEFAULT_BULK if ids is None else MAX_BULK
    )
    state = app_state(request)
    result = await bulk_retry(
        state.db.pool,
        state.redis,
        state.metrics,
        _actor(request, principal),
        ids=ids,
        queue=body.get("queue"),
        fingerprint=body.get("fingerprint"),
        max_entries=max_entries,
    )
    return JSONResponse({"retried": result.retried, "job_ids": result.job_ids}, status_code=202)


async def dlq_rejected(request: Request, principal: Principal) -> Response:
    """Records Postgres refused (``shared.dlq.rejects``), newest first, with the refusal."""
    params = query_params(request, ("limit",))
    limit = int_in_range(params.get("limit"), "limit", 1, MAX_LISTED, 20)
    try:
        total, entries = await newest_rejected(app_state(request).redis, limit)
    except (OSError, TimeoutError, RedisError) as exc:
        raise DependencyUnavailable("redis", "the rejected-record list cannot be read") from exc
    return JSONResponse({"total": total, "items": entries})


ROUTES = [
    Route(BASE, admin_endpoint(list_dlq), methods=["GET"]),
    Route(f"{BASE}/groups", admin_endpoint(dlq_groups), methods=["GET"]),
    Route(f"{BASE}/rejected", admin_endpoint(dlq_rejected), methods=["GET"]),
    Route(f"{BASE}/retry", admin_endpoint(dlq_bulk_retry), methods=["POST"]),
    Route(BASE + "/{entry_id}", admin_endpoint(dlq_detail), methods=["GET"]),
    Route(BASE + "/{entry_id}/retry", admin_endpoint(dlq_retry), methods=["POST"]),
    Route(BASE + "/{entry_id}/resolve", admin_endpoint(dlq_resolve), methods=["POST"]),
]

# -- OpenAPI ----------------------------------------------------------------------------------
_TIME = {"type": ["string", "null"], "format": "date-time"}
ENTRY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "format": "uuid"},
    "queue": {"type": "string", "enum": ["distribute_lead", "email_send", "report_export", "scheduler"]},
    "job_id": {"type": "string"},
    "function": {"type": "string"},
    "error_type": {"type": "string"},
    "error_message": {"type": "string"},
    "fingerprint": {"type": "string"},
    "attempts": {"type": "integer"},
    "reason": {
        "type": "string",
        "enum": list(DLQ_REASONS),
    },
    "enqueued_at": _TIME,
    "failed_at": {"type": "string", "format": "date-time"},
    "correlation_id": {"type": ["string", "null"]},
    "resolved": {"type": "boolean"},
    "resolved_at": _TIME,
    "resolved_by": {"type": ["string", "null"]},
    "resolution": {"type": ["string", "null"], "enum": ["retried", "manual", None]},
    "retry_job_id": {"type": ["string", "null"]},
    "retry_of": {"type": ["string", "null"], "format": "uuid"},
    "content_escaped": {
        "type": "boolean",
        "description": "text fields and payload strings are escaped: `\\` doubled, NUL and lone "
        "surrogates as `\\uXXXX` (shared/dlq/content.py)",
    },
}
ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(ENTRY_PROPERTIES),
    "properties": ENTRY_PROPERTIES,
}
DETAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [*ENTRY_PROPERTIES, "args", "kwargs", "stack_trace", "resolution_note", "payload_omitted"],
    "properties": ENTRY_PROPERTIES
    | {
        "args": {"type": "array"},
        "kwargs": {"type": "object"},
        "stack_trace": {"type": "string"},
        "resolution_note": {"type": ["string", "null"]},
        "payload_omitted": {
            "type": ["string", "null"],
            "description": "why args/kwargs were not stored (too large, not JSON); not retryable then",
        },
    },
}
GROUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "fingerprint": {"type": "string"},
        "queue": {"type": "string"},
        "function": {"type": "string"},
        "error_type": {"type": "string"},
        "sample_message": {"type": "string"},
        "count": {"type": "integer"},
        "first_failed_at": {"type": "string", "format": "date-time"},
        "last_failed_at": {"type": "string", "format": "date-time"},
    },
}
_ID_PARAM = {
    "name": "entry_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_QUEUE_PARAM = {
    "name": "queue",
    "in": "query",
    "schema": {"type": "string", "enum": ["distribute_lead", "email_send", "report_export", "scheduler"]},
}
_RESOLVED_PARAM = {"name": "resolved", "in": "query", "schema": {"type": "boolean"}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(operation_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["dlq"],
        "security": SECURITY,
        "responses": responses,
        **extra,
    }


OPENAPI_PATHS: dict[str, Any] = {
    BASE: {
        "get": _op(
            "listDlqEntries",
            "List DLQ entries, newest first (keyset pagination)",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["items", "next_cursor"],
                        "properties": {
                            "items": {"type": "array", "items": ENTRY_SCHEMA},
                            "next_cursor": {"type": ["string", "null"]},
                        },
                    },
                    "a page",
                ),
                **error_responses("400", "401", "403", "503"),
            },
            parameters=[
                _QUEUE_PARAM,
                _RESOLVED_PARAM,
                {"name": "fingerprint", "in": "query", "schema": {"type": "string", "maxLength": 64}},
                {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
        )
    },
    f"{BASE}/groups": {
        "get": _op(
            "listDlqGroups",
            "Failures grouped by fingerprint (unresolved by default)",
            {
                "200": _json(
                    {"type": "object", "properties": {"groups": {"type": "array", "items": GROUP_SCHEMA}}},
                    "groups",
                ),
                **error_responses("400", "401", "403", "503"),
            },
            parameters=[_QUEUE_PARAM, _RESOLVED_PARAM],
        )
    },
    f"{BASE}/retry": {
        "post": _op(
            "bulkRetryDlqEntries",
            "Bulk redrive by ids or by queue + fingerprint; each entry exactly once",
            {
                "202": _json(
                    {
                        "type": "object",
                        "required": ["retried", "job_ids"],
                        "properties": {
                            "retried": {"type": "integer"},
                            "job_ids": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "re-enqueued",
                ),
                **error_responses("400", "401", "403", "413", "503"),
            },
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "ids": {"type": "array", "items": {"type": "string", "format": "uuid"}},
                                "queue": {"type": "string"},
                                "fingerprint": {"type": "string"},
                                "max": {"type": "integer", "minimum": 1, "maximum": MAX_BULK},
                            },
                        }
                    }
                },
            },
        )
    },
    f"{BASE}/rejected": {
        "get": _op(
            "listRejectedDlqRecords",
            "DLQ records Postgres refused (kept in Redis for an operator), newest first",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["total", "items"],
                        "properties": {
                            "total": {"type": "integer", "minimum": 0},
                            "items": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "rejected_at": {"type": ["string", "null"]},
                                        "error": {"type": "string"},
                                        "record": {},
                                        "record_truncated": {
                                            "type": "boolean",
                                            "description": "args, kwargs and stack trace left out "
                                            "of this listing (over 64 KiB); the whole record stays in Redis",
                                        },
                                    },
                                },
                            },
                        },
                    },
                    "the newest rejected records and how many there are",
                ),
                **error_responses("400", "401", "403", "503"),
            },
            parameters=[
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}
            ],
        )
    },
    BASE + "/{entry_id}": {
        "get": _op(
            "getDlqEntry",
            "One DLQ entry with payload and stack trace",
            {"200": _json(DETAIL_SCHEMA, "the entry"), **error_responses("400", "401", "403", "404", "503")},
            parameters=[_ID_PARAM],
        )
    },
    BASE + "/{entry_id}/retry": {
        "post": _op(
            "retryDlqEntry",
            "Re-enqueue the original call on its queue, exactly once",
            {
                "202": _json(
                    {"type": "object", "required": ["job_id"], "properties": {"job_id": {"type": "string"}}},
                    "re-enqueued",
                ),
                **error_responses("400", "401", "403", "404", "409", "413", "503"),
            },
            parameters=[_ID_PARAM],
        )
    },
    BASE + "/{entry_id}/resolve": {
        "post": _op(
            "resolveDlqEntry",
            "Mark resolved by hand, with an optional note",
            {
                "200": _json(DETAIL_SCHEMA, "the resolved entry"),
                **error_responses("400", "401", "403", "404", "409", "413", "503"),
            },
            parameters=[_ID_PARAM],
            requestBody={
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"note": {"type": "string", "maxLength": 2000}},
                        }
                    }
                },
            },
        )
    },
}

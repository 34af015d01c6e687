"""``GET /api/v1/admin/queues``: depth, active, deferred, oldest age, failures, DLQ size."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.guard import Principal, admin_endpoint
from service.openapi_schemas import SECURITY, error_responses
from service.state import app_state
from service.validation import query_params
from shared.infra.jsonable import dataclass_to_dict
from shared.jobs.stats import collect_queue_stats, export_queue_gauges


async def list_queues(request: Request, principal: Principal) -> Response:
    query_params(request, ())
    state = app_state(request)
    stats = await collect_queue_stats(state.db, state.redis)
    export_queue_gauges(stats, state.metrics)
    return JSONResponse(
        {
            "queues": [
                {**dataclass_to_dict(item), "paused": item.paused.as_json() if item.paused else None}
                for item in stats
            ]
        }
    )


ROUTES = [Route("/api/v1/admin/queues", admin_endpoint(list_queues), methods=["GET"])]

QUEUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "name",
        "depth",
        "active",
        "deferred",
        "oldest_job_age_seconds",
        "failed_last_hour",
        "dlq_size",
        "paused",
    ],
    "properties": {
        "name": {"type": "string", "enum": ["distribute_lead", "email_send", "report_export"]},
        "depth": {"type": "integer", "minimum": 0},
        "active": {"type": "integer", "minimum": 0},
        "deferred": {"type": "integer", "minimum": 0},
        "oldest_job_age_seconds": {"type": "number", "minimum": 0},
        "failed_last_hour": {"type": "integer", "minimum": 0},
        "dlq_size": {"type": "integer", "minimum": 0},
        "paused": {
            "description": "null while the queue runs; who paused it, why and since when otherwise",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["by", "reason", "since"],
                    "properties": {
                        "by": {"type": "string"},
                        "reason": {"type": "string"},
                        "since": {"type": "string", "format": "date-time"},
                    },
                },
            ],
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/admin/queues": {
        "get": {
            "operationId": "listQueues",
            "summary": "Queue depth, activity and failures for the three job queues",
            "tags": ["admin"],
            "security": SECURITY,
            "responses": {
                "200": {
                    "description": "one item per queue",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["queues"],
                                "properties": {"queues": {"type": "array", "items": QUEUE_SCHEMA}},
                            }
                        }
                    },
                },
                **error_responses("400", "401", "403", "503"),
            },
        }
    }
}

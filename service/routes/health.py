"""Kubernetes probes. Liveness does no I/O at all; readiness checks dependencies."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.readiness import readiness
from service.state import app_state


async def live(request: Request) -> Response:
    return JSONResponse({"status": "pass"})


async def ready(request: Request) -> Response:
    status, body = await readiness(app_state(request))
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/health+json",
        headers={"Cache-Control": "no-store"},
    )


ROUTES = [
    Route("/health/live", live, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
]

_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
        "releaseId": {"type": "string"},
        "output": {"type": "string"},
        "checks": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object"}}},
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/health/live": {
        "get": {
            "operationId": "liveness",
            "summary": "Liveness: the event loop answers (no I/O)",
            "tags": ["probes"],
            "responses": {
                "200": {"description": "alive", "content": {"application/json": {"schema": _HEALTH_SCHEMA}}}
            },
        }
    },
    "/health/ready": {
        "get": {
            "operationId": "readiness",
            "summary": "Readiness: Postgres, Redis and worker heartbeats (IETF health+json)",
            "tags": ["probes"],
            "responses": {
                "200": {
                    "description": "pass or warn",
                    "content": {"application/health+json": {"schema": _HEALTH_SCHEMA}},
                },
                "503": {
                    "description": "fail or draining",
                    "content": {"application/health+json": {"schema": _HEALTH_SCHEMA}},
                },
            },
        }
    },
}

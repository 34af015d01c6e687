"""``GET /openapi.json``: OpenAPI 3.1 assembled from each route module's ``OPENAPI_PATHS``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared import __version__

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def build_spec(path_groups: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for group in path_groups:
        for path, operations in group.items():
            paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fmhl-ops",
            "version": __version__,
            "description": "Operations plane: probes, metrics, admin API",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_route(spec: dict[str, Any]) -> Route:
    async def endpoint(request: Request) -> Response:
        return JSONResponse(spec)

    return Route("/openapi.json", endpoint, methods=["GET"])


OPENAPI_PATHS: dict[str, Any] = {
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["meta"],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
}

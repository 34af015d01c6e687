"""Reusable OpenAPI fragments: the error response and bearer security."""

from __future__ import annotations

from typing import Any

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]

_DESCRIPTIONS = {
    "400": "invalid request (validation)",
    "401": "missing, malformed, unknown, expired or revoked token",
    "403": "authenticated but not an admin",
    "404": "not found",
    "409": "conflict (already resolved)",
    "413": "body over 1 MiB",
    "429": "rate limited or locked",
    "503": "a backing service (Postgres or Redis) is unavailable",
}


def error_responses(*statuses: str) -> dict[str, Any]:
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status in statuses
    }

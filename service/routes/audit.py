"""``GET /api/v1/admin/audit``: the newest audit rows, optionally by action or target.

Not in the contract's route list; added so the on-call engineer can see who retried or resolved
what without database access. Read-only, admin only, newest first, at most 200 rows.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.guard import Principal, admin_endpoint
from service.openapi_schemas import SECURITY, error_responses
from service.state import app_state
from service.validation import int_in_range, query_params
from shared import audit
from shared.infra.errors import Invalid
from shared.infra.timefmt import iso_utc_or_none

MAX_AUDIT_ROWS = 200


def _entry_json(entry: audit.AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "occurred_at": iso_utc_or_none(entry.occurred_at),
        "actor": entry.actor,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "metadata": entry.metadata,
        "ip": entry.ip,
        "request_id": entry.request_id,
    }


async def list_audit(request: Request, principal: Principal) -> Response:
    params = query_params(request, ("action", "target_id", "limit"))
    for name in ("action", "target_id"):
        if name in params and not 1 <= len(params[name]) <= 200:
            raise Invalid(f"{name} must be 1-200 characters")
    limit = int_in_range(params.get("limit"), "limit", 1, MAX_AUDIT_ROWS, 50)
    async with app_state(request).db.pool.acquire() as conn:
        entries = await audit.recent(
            conn, action=params.get("action"), target_id=params.get("target_id"), limit=limit
        )
    return JSONResponse({"items": [_entry_json(e) for e in entries]})


ROUTES = [Route("/api/v1/admin/audit", admin_endpoint(list_audit), methods=["GET"])]

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/admin/audit": {
        "get": {
            "operationId": "listAuditLog",
            "summary": "Newest audit rows (who changed what, from where, in which request)",
            "tags": ["admin"],
            "security": SECURITY,
            "parameters": [
                {"name": "action", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                {"name": "target_id", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
            ],
            "responses": {
                "200": {
                    "description": "audit rows, newest first",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"items": {"type": "array", "items": {"type": "object"}}},
                            }
                        }
                    },
                },
                **error_responses("400", "401", "403", "503"),
            },
        }
    }
}

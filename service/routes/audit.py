"""``GET /api/v1/admin/audit``: the newest audit rows, optionally by action or target.

Not in the contract's route list; added so the on-call engineer can see who retried or resolved
what without database access. Read-only, admin only, newest first, at most 200 rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from msgspec import Meta, Struct

from service.contract import Call, NoBody, operation
from shared import audit

MAX_AUDIT_ROWS = 200
Filter = Annotated[str, Meta(min_length=1, max_length=200)]


class AuditQuery(Struct, forbid_unknown_fields=True):
    action: Filter | None = None
    target_id: Filter | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_AUDIT_ROWS)] = 50


@dataclass(frozen=True, slots=True)
class AuditList:
    items: list[audit.AuditEntry]


@operation("GET", "/api/v1/admin/audit", params=AuditQuery, body=NoBody, response=AuditList,
           operation_id="listAuditLog",
           summary="Newest audit rows (who changed what, from where, in which request)",
           response_description="audit rows, newest first", tags=("admin",), auth="admin",
           errors=(400, 401, 403, 503))  # fmt: skip
async def list_audit(call: Call[AuditQuery, NoBody]) -> AuditList:
    query = call.params
    async with call.state.db.pool.acquire() as conn:
        entries = await audit.recent(conn, action=query.action, target_id=query.target_id, limit=query.limit)
    return AuditList(entries)


OPERATIONS = [list_audit]

"""Kubernetes probes. Liveness does no I/O at all; readiness checks dependencies."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from service.contract import Call, NoBody, NoParams, operation
from service.readiness import HealthReport, readiness

HEALTH_JSON = "application/health+json"
_ALIVE = HealthReport(status="pass")


@operation("GET", "/health/live", params=NoParams, body=NoBody, response=HealthReport,
           operation_id="liveness", summary="Liveness: the event loop answers (no I/O)",
           response_description="alive", tags=("probes",), auth="public")  # fmt: skip
async def live(call: Call[NoParams, NoBody]) -> HealthReport:
    return _ALIVE


@operation("GET", "/health/ready", params=NoParams, body=NoBody, response=HealthReport,
           operation_id="readiness",
           summary="Readiness: Postgres, Redis and worker heartbeats (IETF health+json)",
           response_description="pass or warn", other_responses={503: "fail or draining"},
           media_type=HEALTH_JSON, tags=("probes",), auth="public")  # fmt: skip
async def ready(call: Call[NoParams, NoBody]) -> Response:
    status, report = await readiness(call.state)
    return Response(
        msgspec.json.encode(report),
        status_code=status,
        media_type=HEALTH_JSON,
        headers={"Cache-Control": "no-store"},
    )


OPERATIONS = [live, ready]

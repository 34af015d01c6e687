"""``GET /metrics``: Prometheus text exposition, with pool gauges refreshed at scrape."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.state import AppState, app_state
from shared.db import record_pool_gauges
from shared.errors import DependencyUnavailable


async def refresh_scrape_gauges(state: AppState) -> None:
    """Gauges read at scrape time. Only the service exports these (one source, no double count)."""
    try:
        record_pool_gauges(state.db.pool, state.metrics)
    except DependencyUnavailable:
        pass  # no pool yet: the gauge keeps its last value; readiness reports the outage


async def metrics_endpoint(request: Request) -> Response:
    state = app_state(request)
    await refresh_scrape_gauges(state)
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


ROUTES = [Route("/metrics", metrics_endpoint, methods=["GET"])]

OPENAPI_PATHS: dict[str, Any] = {
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format 0.0.4)",
            "tags": ["probes"],
            "responses": {
                "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
            },
        }
    }
}

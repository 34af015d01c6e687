"""``GET /metrics``: Prometheus text exposition, with pool gauges refreshed at scrape."""

from __future__ import annotations

import contextlib
import time

from starlette.responses import Response

from service.contract import Call, NoBody, NoParams, operation
from service.state import AppState
from shared.dlq.failure_kinds import export_failure_kinds, read_failure_kinds
from shared.dlq.rejects import rejected_count
from shared.dlq.spool import spool_size
from shared.infra.db import record_pool_gauges
from shared.infra.errors import DependencyUnavailable
from shared.infra.logs import log_event
from shared.jobs.stats import collect_queue_stats, export_queue_gauges
from shared.redrive_tasks.control import count_by_state, export_task_gauges

SCRAPE_CACHE_SECONDS = 5.0


async def refresh_scrape_gauges(state: AppState) -> None:
    """Gauges read at scrape time. Only the service exports these (one source, no double count).

    Queue and DLQ gauges come from the same code as ``GET /api/v1/admin/queues``, refreshed at
    most every few seconds so frequent scrapes stay cheap. When a backend is unreachable the
    gauges keep their last values (never zeros) and readiness reports the outage.
    """
    with contextlib.suppress(DependencyUnavailable):
        record_pool_gauges(state.db.pool, state.metrics)
    now = time.monotonic()
    if now - state.queue_gauges_refreshed_at < SCRAPE_CACHE_SECONDS:
        return
    try:
        stats = await collect_queue_stats(state.db, state.redis)
        export_queue_gauges(stats, state.metrics)
        state.metrics.set(state.metrics.dlq_spool_size, await spool_size(state.redis))
        state.metrics.set(state.metrics.dlq_spool_rejected, await rejected_count(state.redis))
        export_failure_kinds(await read_failure_kinds(state.db.pool), state.metrics)
        async with state.db.pool.acquire() as conn:
            export_task_gauges(await count_by_state(conn), state.metrics)
        state.queue_gauges_refreshed_at = now
    except Exception as exc:
        log_event("WARNING", "scrape_gauges_stale", error_type=type(exc).__name__)


@operation("GET", "/metrics", params=NoParams, body=NoBody, response=str, media_type="text/plain",
           operation_id="metrics", summary="Prometheus metrics (text exposition format 0.0.4)",
           response_description="metrics", tags=("probes",), auth="public")  # fmt: skip
async def metrics_endpoint(call: Call[NoParams, NoBody]) -> Response:
    state = call.state
    await refresh_scrape_gauges(state)
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


OPERATIONS = [metrics_endpoint]

"""``GET /api/v1/admin/queues``: depth, active, deferred, oldest age, failures, DLQ size."""

from __future__ import annotations

from dataclasses import dataclass

from service.contract import Call, NoBody, NoParams, operation
from shared.jobs.stats import QueueStats, collect_queue_stats, export_queue_gauges


@dataclass(frozen=True, slots=True)
class QueueList:
    queues: list[QueueStats]


@operation("GET", "/api/v1/admin/queues", params=NoParams, body=NoBody, response=QueueList,
           operation_id="listQueues", summary="Queue depth, activity and failures for the three job queues",
           response_description="one item per queue", tags=("admin",), auth="admin",
           errors=(400, 401, 403, 503))  # fmt: skip
async def list_queues(call: Call[NoParams, NoBody]) -> QueueList:
    state = call.state
    stats = await collect_queue_stats(state.db, state.redis)
    export_queue_gauges(stats, state.metrics)
    return QueueList(stats)


OPERATIONS = [list_queues]

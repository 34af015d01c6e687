"""What the app holds while it runs: settings, metrics, the database, Redis, drain state.

Kept on ``app.state.ops`` (not only lifespan state) because the server's SIGTERM handler must
flip ``draining`` outside any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from arq.connections import ArqRedis
from starlette.requests import Request

from shared.auth.kdf_queue import KdfQueue
from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.metrics import Metrics


@dataclass(slots=True)
class AppState:
    settings: Settings
    metrics: Metrics
    db: Database
    redis: ArqRedis
    draining: bool = False
    # the process's password-hashing queue, shared by the API login and the console sign-in
    kdf: KdfQueue = field(default_factory=KdfQueue)
    # monotonic time the queue gauges were last refreshed for a scrape (cached briefly)
    queue_gauges_refreshed_at: float = -1e9


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.ops
    return state

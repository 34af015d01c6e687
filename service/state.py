"""What the app holds while it runs: settings, metrics, the database, Redis, drain state.

Kept on ``app.state.ops`` (not only lifespan state) because the server's SIGTERM handler must
flip ``draining`` outside any request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from arq.connections import ArqRedis
from starlette.requests import Request

from shared.config import Settings
from shared.db import Database
from shared.metrics import Metrics


@dataclass(slots=True)
class AppState:
    settings: Settings
    metrics: Metrics
    db: Database
    redis: ArqRedis
    draining: bool = False
    gauge_cache: dict[str, float] = field(default_factory=dict)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.ops
    return state

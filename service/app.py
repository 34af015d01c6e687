"""``create_app(settings)``: the Starlette application factory (uvicorn ``--factory`` target)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq.connections import ArqRedis
from starlette.applications import Starlette
from starlette.middleware import Middleware

from service import openapi
from service.console.app import ConsoleDispatch, build_console
from service.contract import Operation
from service.errors import EXCEPTION_HANDLERS
from service.middleware import RequestContextMiddleware
from service.routes import audit, auth, dlq, health, live_jobs, metrics, queue_controls, queues, redrives
from service.state import AppState
from shared.infra.config import Settings, load_settings
from shared.infra.db import Database
from shared.infra.metrics import Metrics
from shared.infra.redis import create_redis
from shared.infra.tracing import instrument_app

ROUTE_MODULES = (health, metrics, auth, queues, dlq, queue_controls, live_jobs, audit, redrives)


def api_operations() -> list[Operation[Any, Any, Any]]:
    """Every operation of every route module, in matching order (``service/contract.py``)."""
    return [op for module in ROUTE_MODULES for op in module.OPERATIONS]


def create_app(
    settings: Settings | None = None,
    *,
    metrics_registry: Metrics | None = None,
    database: Database | None = None,
    redis: ArqRedis | None = None,
) -> Starlette:
    """Build the app. Resources may be injected (tests); otherwise they come from ``settings``.

    Nothing is dialled here: the database connects in the background after start-up and Redis
    connects lazily, so the app answers ``/health/live`` even when both are down.
    """
    settings = settings or load_settings()
    app_metrics = metrics_registry or Metrics()
    db = database or Database(settings, application_name="fmhl-ops-service", metrics=app_metrics)
    redis_client = redis or create_redis(
        settings.require_redis_url(), timeout_seconds=max(settings.health_check_timeout_seconds, 1.0) * 2
    )
    state = AppState(settings=settings, metrics=app_metrics, db=db, redis=redis_client)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db.start()
        try:
            yield
        finally:
            await db.close()
            await redis_client.aclose()

    operations = api_operations()
    app = Starlette(
        routes=[op.route() for op in [*operations, openapi.document_operation(operations)]],
        middleware=[
            Middleware(RequestContextMiddleware, metrics=app_metrics),
            Middleware(ConsoleDispatch, console=build_console(state)),  # /console, /docs: HTML
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.ops = state
    instrument_app(app)  # OpenTelemetry server spans, only when tracing is on
    return app

"""Running a worker: ``fmhl-ops worker QUEUE`` (one process per queue) and in-process for dev.

Each worker serves ``/metrics`` and ``/health/live`` on ``WORKER_METRICS_PORT`` (liveness = the
poll loop ran in the last minute). SIGTERM stops picking new jobs and waits up to
``job_completion_wait`` for running ones (arq's own handler), then shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from shared.infra.config import Settings
from shared.infra.db import record_pool_gauges
from shared.infra.errors import DependencyUnavailable
from shared.infra.http_server import build_uvicorn, probe_app, start_side_server, stop_side_server
from shared.infra.metrics import Metrics
from worker.fmhl_worker import FmhlWorker, build_worker


def probe_app_for(worker: FmhlWorker) -> ASGIApp:
    """``/metrics`` (with fresh pool gauges) and ``/health/live`` (the poll loop ran lately)."""

    async def metrics() -> Response:
        db = worker.ctx.get("db")
        with contextlib.suppress(DependencyUnavailable):
            if db is not None:
                record_pool_gauges(db.pool, worker.metrics)
        body, content_type = worker.metrics.render()
        return Response(body, media_type=content_type)

    async def live() -> Response:
        alive = worker.is_alive()
        body = {
            "status": "pass" if alive else "fail",
            "queue": worker.queue_name,
            "worker_id": worker.worker_id,
        }
        return JSONResponse(body, status_code=200 if alive else 503)

    return probe_app(metrics, live)


def probe_server(worker: FmhlWorker, port: int, host: str = "0.0.0.0") -> uvicorn.Server:
    return build_uvicorn(probe_app_for(worker), host, port, lifespan="off", head_deadline=True)


async def run_worker(queue: str, settings: Settings, **worker_kwargs: Any) -> None:
    """Run one queue's worker until SIGTERM/SIGINT (arq's handlers) and shut down cleanly."""
    worker = build_worker(queue, settings, metrics=Metrics(), **worker_kwargs)
    probe = probe_server(worker, settings.worker_metrics_port) if settings.worker_metrics_port else None
    probe_task = await start_side_server(probe) if probe is not None else None
    worker.main_task = asyncio.ensure_future(worker.main())
    try:
        await worker.main_task
    except asyncio.CancelledError:
        pass  # arq cancels main_task once running jobs finished (or job_completion_wait passed)
    finally:
        await worker.close()
        if probe is not None and probe_task is not None:
            await stop_side_server(probe, probe_task)


async def stop_gracefully(worker: FmhlWorker) -> None:
    """For in-process workers (dev): stop picking jobs, let running ones finish, then close."""
    if worker.main_task is not None and not worker.main_task.done():
        worker.handle_sig_wait_for_completion(signal.SIGTERM)
        with contextlib.suppress(asyncio.CancelledError):
            await worker.main_task
    await worker.close()

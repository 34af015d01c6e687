"""Run the service under uvicorn with a graceful, observable shutdown.

On the first SIGTERM/SIGINT the app flips to *draining*: ``/health/ready`` answers 503 so the
load balancer stops sending traffic, for ``drain_seconds``; then uvicorn stops accepting, lets
in-flight requests finish and runs the lifespan shutdown. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Generator, Iterable

import uvicorn
from starlette.applications import Starlette

from service.routes.metrics import refresh_scrape_gauges
from service.state import AppState
from shared.probe_http import ProbeServer, live_handler

DEFAULT_DRAIN_SECONDS = 3.0


class _QuietSignalsServer(uvicorn.Server):
    """uvicorn server whose signals are handled by ``run_until_signalled`` instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_uvicorn(app: Starlette, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # stdlib logging is already routed into loguru (JSON)
        access_log=True,
        lifespan="on",
        timeout_graceful_shutdown=20,
        server_header=False,
    )
    return _QuietSignalsServer(config)


def metrics_side_server(state: AppState, host: str, port: int) -> ProbeServer:
    async def metrics() -> tuple[int, bytes, str]:
        await refresh_scrape_gauges(state)
        body, content_type = state.metrics.render()
        return 200, body, content_type

    return ProbeServer({"/metrics": metrics, "/health/live": live_handler}, host=host, port=port)


async def run_until_signalled(
    servers: Iterable[uvicorn.Server],
    *,
    on_drain: Callable[[], None],
    drain_seconds: float,
) -> None:
    """Serve until SIGTERM/SIGINT, drain, then stop every server."""
    servers = list(servers)
    loop = asyncio.get_running_loop()
    stop_now = asyncio.Event()
    signalled = asyncio.Event()

    def on_signal() -> None:
        if signalled.is_set():
            stop_now.set()
            for server in servers:
                server.force_exit = True
            return
        signalled.set()
        on_drain()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)

    async def shutdown_after_drain() -> None:
        await signalled.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_now.wait(), timeout=drain_seconds)
        for server in servers:
            server.should_exit = True

    tasks = [asyncio.ensure_future(s.serve()) for s in servers]
    watcher = asyncio.ensure_future(shutdown_after_drain())
    try:
        await asyncio.gather(*tasks)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve(
    app: Starlette, host: str, port: int, *, drain_seconds: float = DEFAULT_DRAIN_SECONDS
) -> None:
    state: AppState = app.state.ops
    server = build_uvicorn(app, host, port)
    side: ProbeServer | None = None
    if state.settings.metrics_port is not None:
        side = metrics_side_server(state, host, state.settings.metrics_port)
        await side.start()

    def drain() -> None:
        state.draining = True

    try:
        await run_until_signalled([server], on_drain=drain, drain_seconds=drain_seconds)
    finally:
        if side is not None:
            await side.stop()

"""Run the service under uvicorn with a graceful, observable shutdown.

On the first SIGTERM/SIGINT the app flips to *draining*: ``/health/ready`` answers 503 so the
load balancer stops sending traffic, for ``drain_seconds``; then uvicorn stops accepting, lets
in-flight requests finish and runs the lifespan shutdown. A second signal exits at once.

While draining, every response carries ``Connection: close``. A keep-alive connection outlives
the endpoint's removal (kube-proxy keeps routing an established connection), so without it a
pooled client kept sending on a connection uvicorn then closed under its next request: a reset
(tests/reliability/test_graceful_shutdown.py). Closed after its response, the client reconnects
and the load balancer sends it elsewhere.

The main port has a request-head deadline (10 s from connect, and again after each response) and a
cap of 1000 open connections (``shared.infra.http_server.MainPortProtocol``): 200 connections
dribbling header lines (slowloris) used to stay open indefinitely.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.routes.metrics import refresh_scrape_gauges
from service.state import AppState
from shared.infra.http_server import MainPortProtocol, build_uvicorn, probe_app

DEFAULT_DRAIN_SECONDS = 3.0


def metrics_side_server(state: AppState, host: str, port: int) -> uvicorn.Server:
    """``METRICS_PORT``: ``/metrics`` and ``/health/live`` alone, so a NetworkPolicy can keep the
    metrics internal while the main port stays open to clients."""

    async def metrics() -> Response:
        await refresh_scrape_gauges(state)
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    return build_uvicorn(probe_app(metrics), host, port, lifespan="off", head_deadline=True)


def close_connections_while_draining(app: ASGIApp, state: AppState) -> ASGIApp:
    """``Connection: close`` on every response to a request that arrives while draining."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if not state.draining or scope["type"] != "http":
            await app(scope, receive, send)  # the hot path: no wrapper at all
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped


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
    main = build_uvicorn(close_connections_while_draining(app, state), host, port, protocol=MainPortProtocol)
    servers: list[uvicorn.Server] = [main]
    if state.settings.metrics_port is not None:
        servers.append(metrics_side_server(state, host, state.settings.metrics_port))

    def drain() -> None:
        state.draining = True

    await run_until_signalled(servers, on_drain=drain, drain_seconds=drain_seconds)

"""uvicorn servers for every HTTP listener we run: the service, its optional ``METRICS_PORT``
side listener and each worker's probe port.

Signals are never uvicorn's: the service's ``run_until_signalled`` and arq's worker own
SIGTERM/SIGINT, and stop these servers by setting ``should_exit``. A side listener is a
two-route Starlette app (``/metrics``, ``/health/live``), so it answers with correct status
lines and reason phrases, enforces a request-head deadline and speaks keep-alive. uvicorn's own
access log is off: the service's middleware writes one with request ids, probes excepted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator
from typing import Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from shared.infra.correlation import accept_or_new, bind_correlation_id, reset_correlation_id

ProbeHandler = Callable[[], Awaitable[Response]]

# A side-port connection with no request in progress is closed after this long: a client that
# connects and sends nothing, or dribbles a request head (slowloris), cannot hold it open.
SIDE_HEAD_DEADLINE_SECONDS = 5.0
# The main port's: longer, as real clients (through an ingress, or a slow link) are behind it;
# any client sends a request head in well under a second.
MAIN_HEAD_DEADLINE_SECONDS = 10.0
# Open connections the main port keeps at most; one more is closed at once, unanswered. Each
# connection holds one request at a time (HTTP/1.1), so this also bounds requests in progress.
MAIN_MAX_CONNECTIONS = 1000


class HeadDeadlineProtocol(H11Protocol):
    """h11 with a request-head deadline, which uvicorn lacks (it only times out idle keep-alive).

    The deadline runs whenever no request is being answered: from connect, and again after each
    response. If it passes before a complete request head arrived, the connection is closed.

    One timer per connection, not one per response: a response only notes when it completed, and
    the timer, when it fires, moves itself to that moment plus the deadline if a response completed
    since it was set (cancelling and re-creating a timer on every keep-alive response cost ~4 % of
    a ``/health/live`` probe).
    """

    head_deadline_seconds = SIDE_HEAD_DEADLINE_SECONDS
    max_connections: int | None = None  # None: no cap

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            transport.close()  # over the cap: no answer, nothing held (connection_lost forgets it)
            return
        self._idle_since = self.loop.time()
        self._arm_head_deadline(self._idle_since + self.head_deadline_seconds)

    def _arm_head_deadline(self, when: float) -> None:
        self._armed_idle_since = self._idle_since
        self._head_timer = self.loop.call_at(when, self._head_deadline_passed)

    def _head_deadline_passed(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_deadline(self.loop.time() + self.head_deadline_seconds)  # answering: not idle
            return
        if self._idle_since != self._armed_idle_since:  # a response completed since: idle from then
            self._arm_head_deadline(self._idle_since + self.head_deadline_seconds)
            return
        self.transport.close()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class MainPortProtocol(HeadDeadlineProtocol):
    """The service's main port: a request-head deadline and a cap on open connections."""

    head_deadline_seconds = MAIN_HEAD_DEADLINE_SECONDS
    max_connections = MAIN_MAX_CONNECTIONS


class QuietSignalsServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its owner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_uvicorn(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    lifespan: Literal["on", "off", "auto"] = "on",
    head_deadline: bool = False,
    protocol: type[H11Protocol] | None = None,
) -> QuietSignalsServer:
    """A uvicorn server for ``app``; ``head_deadline`` selects ``HeadDeadlineProtocol`` (side ports),
    ``protocol`` another h11 protocol class (the main port's ``MainPortProtocol``)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # stdlib logging is already routed into loguru (JSON)
        access_log=False,  # service.middleware writes the access log (with request ids)
        lifespan=lifespan,
        timeout_graceful_shutdown=20,
        server_header=False,
        http=protocol or (HeadDeadlineProtocol if head_deadline else "auto"),
    )
    return QuietSignalsServer(config)


async def always_live() -> Response:
    return JSONResponse({"status": "pass"})


def probe_app(metrics: ProbeHandler, live: ProbeHandler = always_live) -> _WithRequestId:
    """The two-route app of a side listener; any other path is a JSON 404, any other method 405."""

    async def metrics_endpoint(request: Request) -> Response:
        return await metrics()

    async def live_endpoint(request: Request) -> Response:
        return await live()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
        return JSONResponse({"error": {"code": code, "message": str(getattr(exc, "detail", code))}}, status)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": {"code": "internal_error", "message": "internal server error"}}, 500)

    app = Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET", "HEAD"]),
            Route("/health/live", live_endpoint, methods=["GET", "HEAD"]),
        ],
        exception_handlers={404: not_found, 405: not_found, 500: internal_error},
    )
    return _WithRequestId(app)


class _WithRequestId:
    """Bind ``X-Request-ID`` (or a new id) so the access log line of a probe carries one too;
    every answer also carries ``X-Content-Type-Options: nosniff``, as on the main port."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.routes = app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"x-request-id")
        request_id = accept_or_new(raw.decode("latin-1") if raw is not None else None)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
            await send(message)

        token = bind_correlation_id(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_correlation_id(token)


async def start_side_server(server: uvicorn.Server) -> asyncio.Task[None]:
    """Start ``server`` in the background and return once it listens (or raise why it could not)."""
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()  # re-raise the bind error
            raise OSError("side server stopped before it started")
        await asyncio.sleep(0.01)
    return task


async def stop_side_server(server: uvicorn.Server, task: asyncio.Task[None], timeout: float = 5.0) -> None:
    server.should_exit = True
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(task, timeout)


def bound_port(server: uvicorn.Server) -> int:
    """The port a started server listens on (useful with port 0)."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise RuntimeError("server is not listening")

"""ASGI middleware: request id, HTTP metrics, body size limit. Pure ASGI, no per-request objects.

* ``X-Request-ID``: the caller's if valid (1-128 of ``[A-Za-z0-9._-]``) else a fresh UUID; bound
  as the correlation id for every log line of the request and echoed on the response.
* Metrics label by route *template* (``scope["route"].path``); unmatched paths share one label.
* Bodies over ``max_body_bytes`` get 413 before the endpoint sees them.
* Every ``/api/`` response (admin data, tokens, errors alike) carries ``Cache-Control: no-store``
  unless the endpoint set its own, so no browser, proxy or CDN keeps a copy.
* Every response, whatever produced it (API, console, static files, probes, 404/405/413/500),
  carries ``X-Content-Type-Options: nosniff``: a browser never second-guesses a content type.
* The access log is ours (``http_access``: method, path, route, status, duration, client, with
  the request id), not uvicorn's: one JSON line per request, probes and scrapes excepted.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.infra.correlation import accept_or_new, bind_correlation_id, reset_correlation_id
from shared.infra.metrics import Metrics

MAX_BODY_BYTES = 1024 * 1024
UNMATCHED_ROUTE = "unmatched"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes arrive every few seconds from every kubelet and Prometheus: counted in
# fmhl_http_* like every request, but not logged unless they fail with a 5xx.
QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/metrics"})
MAX_LOGGED_PATH = 256
NO_STORE_PREFIX = "/api/"
NOSNIFF = (b"x-content-type-options", b"nosniff")
NO_STORE = (b"cache-control", b"no-store")


class PayloadTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_id, declared = _request_id_and_length(scope)
        request_id = accept_or_new(raw_id.decode("latin-1") if raw_id is not None else None)
        token = bind_correlation_id(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        no_store = str(scope.get("path", "")).startswith(NO_STORE_PREFIX)
        received = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                message["headers"] = _response_headers(message.get("headers") or [], request_id, no_store)
            await send(message)

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge
            return message

        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._send_json(send_wrapper, 413, "payload_too_large", "request body exceeds 1 MiB")
            else:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except PayloadTooLarge:
                    if response_started:
                        raise
                    await self._send_json(
                        send_wrapper, 413, "payload_too_large", "request body exceeds 1 MiB"
                    )
                except Exception as exc:
                    # Handled here, inside the request context, so the log line carries the
                    # request id and the 500 response carries X-Request-ID.
                    logger.opt(exception=exc).bind(
                        event="unhandled_exception", route=_route_template(scope)
                    ).error("unhandled exception")
                    if response_started:
                        raise
                    await self._send_json(send_wrapper, 500, "internal_error", "internal server error")
        finally:
            self._record(scope, status, time.perf_counter() - started)
            reset_correlation_id(token)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = _route_template(scope)
        method = scope.get("method", "GET")
        method = method if method in KNOWN_METHODS else "other"  # bounded label values
        self.metrics.observe_http(method, route, status, elapsed)
        if route not in QUIET_ROUTES or status >= 500:
            _log_access(scope, method, route, status, elapsed)

    @staticmethod
    async def _send_json(send: Send, status: int, code: str, message: str) -> None:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _response_headers(raw: list[tuple[bytes, bytes]], request_id: str, no_store: bool) -> list[Any]:
    """The response's headers, less any X-Request-ID, plus ours: one pass over them (every request)."""
    headers: list[Any] = []
    nosniff = cache_control = False
    for pair in raw:
        name = pair[0].lower()
        if name == b"x-request-id":
            continue
        if name == b"x-content-type-options":
            nosniff = True
        elif name == b"cache-control":
            cache_control = True
        headers.append(pair)
    headers.append((b"x-request-id", request_id.encode()))
    if not nosniff:
        headers.append(NOSNIFF)
    if no_store and not cache_control:
        headers.append(NO_STORE)
    return headers


def _request_id_and_length(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The two headers we need, without building a dict of all of them."""
    raw_id = declared = None
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            raw_id = value
        elif name == b"content-length":
            declared = value
    return raw_id, declared


def _log_access(scope: Scope, method: str, route: str, status: int, elapsed: float) -> None:
    client = scope.get("client")
    logger.bind(
        event="http_access",
        method=method,
        path=str(scope.get("path", ""))[:MAX_LOGGED_PATH],
        route=route,
        status=status,
        duration_ms=round(elapsed * 1000, 2),
        client=client[0] if client else None,
    ).info("http_access")


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE

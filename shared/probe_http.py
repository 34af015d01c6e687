"""A tiny HTTP/1.1 server for side ports: worker ``/metrics`` + ``/health/live``, and the
service's optional ``METRICS_PORT``.

Plain asyncio, GET only, one request per connection. It exists so a NetworkPolicy can keep
metrics on their own port and so workers expose probes without a web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

import orjson

Handler = Callable[[], Awaitable[tuple[int, bytes, str]]]


async def live_handler() -> tuple[int, bytes, str]:
    return 200, orjson.dumps({"status": "pass"}), "application/json"


def _response(status: int, body: bytes, content_type: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}.get(
        status, "OK"
    )
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _error(status: int, code: str, message: str) -> bytes:
    return _response(status, orjson.dumps({"error": {"code": code, "message": message}}), "application/json")


class ProbeServer:
    def __init__(self, routes: Mapping[str, Handler], *, host: str = "0.0.0.0", port: int) -> None:
        self._routes = dict(routes)
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2:
                writer.write(_error(400, "invalid_request", "malformed request line"))
            else:
                method, target = parts[0], parts[1].split("?", 1)[0]
                handler = self._routes.get(target)
                if handler is None:
                    writer.write(_error(404, "not_found", "no such path"))
                elif method not in ("GET", "HEAD"):
                    writer.write(_error(405, "method_not_allowed", "only GET"))
                else:
                    try:
                        status, body, content_type = await handler()
                        writer.write(_response(status, body if method == "GET" else b"", content_type))
                    except Exception:  # a probe must answer, not crash
                        writer.write(_error(500, "internal_error", "internal server error"))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

"""The side listeners (worker probes, ``METRICS_PORT``): real uvicorn on a free port."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from shared.infra import http_server
from shared.infra.http_server import bound_port, build_uvicorn, probe_app, start_side_server, stop_side_server


async def _metrics() -> Response:
    return Response(b"fmhl_up 1\n", media_type="text/plain; version=0.0.4")


async def _dead() -> Response:
    return JSONResponse({"status": "fail"}, status_code=503)


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


@pytest.fixture
async def side_port(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setattr(http_server.HeadDeadlineProtocol, "head_deadline_seconds", 0.5)
    server = build_uvicorn(probe_app(_metrics, _dead), "127.0.0.1", 0, lifespan="off", head_deadline=True)
    task = await start_side_server(server)
    try:
        yield bound_port(server)
    finally:
        await stop_side_server(server, task)


async def test_status_lines_carry_the_right_reason_phrase(side_port: int) -> None:
    live = await _raw(side_port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert live.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    missing = await _raw(side_port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b'"code":"not_found"' in missing
    post = await _raw(side_port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")


async def test_metrics_and_request_id(side_port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{side_port}") as client:
        response = await client.get("/metrics", headers={"X-Request-ID": "probe-1"})
        assert response.status_code == 200 and response.text == "fmhl_up 1\n"
        assert response.headers["x-request-id"] == "probe-1"
        # keep-alive: a second request on the same connection is answered too
        assert (await client.get("/metrics")).status_code == 200


@pytest.mark.serial  # asserts the close within 1.5 s of a 0.5 s deadline
async def test_a_dribbled_request_head_is_cut_off_at_the_deadline(side_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", side_port)
    started = time.monotonic()
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
    await writer.drain()
    for _ in range(10):
        await asyncio.sleep(0.2)
        if reader.at_eof():
            break
        writer.write(b"X-Slow: 1\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            break
    data = await asyncio.wait_for(reader.read(), 5)
    elapsed = time.monotonic() - started
    writer.close()
    assert data == b""  # closed without an answer
    assert elapsed < 1.5, f"connection held {elapsed:.2f}s past a 0.5 s head deadline"

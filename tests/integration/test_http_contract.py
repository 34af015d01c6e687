"""Request ids, error shapes, body limit, metrics labels, JSON logs: the HTTP skeleton."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.infra.config import Settings
from shared.infra.logs import configure_logging
from tests.helpers import running_app


def _samples(body: str, name: str) -> list[Any]:
    return [s for f in text_string_to_metric_families(body) for s in f.samples if s.name == name]


async def test_valid_request_id_is_echoed_and_invalid_ones_replaced(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        ok = await client.get("/health/live", headers={"X-Request-ID": "abc.DEF-123_x"})
        assert ok.headers["x-request-id"] == "abc.DEF-123_x"
        for bad in ("x" * 200, "has spaces in it"):
            response = await client.get("/health/live", headers={"X-Request-ID": bad})
            fresh = response.headers["x-request-id"]
            assert fresh != bad
            assert str(uuid.UUID(fresh)) == fresh
        missing = await client.get("/health/live")
        assert uuid.UUID(missing.headers["x-request-id"])


async def test_errors_use_the_json_shape(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        not_found = await client.get("/no/such/path")
        assert not_found.status_code == 404
        assert not_found.json()["error"]["code"] == "not_found"
        wrong_method = await client.post("/health/live")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"]["code"] == "method_not_allowed"
        too_big = await client.post("/health/live", content=b"x" * (1024 * 1024 + 1))
        assert too_big.status_code == 413
        assert too_big.json() == {
            "error": {"code": "payload_too_large", "message": "request body exceeds 1 MiB"}
        }


async def test_chunked_body_over_the_limit_is_413(settings: Settings) -> None:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    async def chunks() -> Any:
        for _ in range(5):
            yield b"y" * (300 * 1024)

    async with running_app(settings) as (app, client):
        app.router.routes.append(Route("/echo", echo, methods=["POST"]))
        response = await client.post("/echo", content=chunks())
        assert response.status_code == 413
        small = await client.post("/echo", content=b"12345")
        assert small.json() == {"size": 5}


async def test_route_label_is_the_template_and_unmatched_paths_share_one(settings: Settings) -> None:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["entry_id"]})

    async with running_app(settings) as (app, client):
        app.router.routes.append(Route("/test-only/items/{entry_id}", item, methods=["GET"]))
        await client.get("/test-only/items/abc")
        await client.get("/test-only/items/def")
        # the real DLQ detail route is labelled by its template too (401 here: no token)
        await client.get("/api/v1/admin/queues/dlq/abc")
        await client.get("/api/v1/admin/queues/dlq/def")
        await client.get("/random/one")
        await client.get("/random/two")
        body = (await client.get("/metrics")).text
    counts = {
        (s.labels["route"], s.labels["status"]): s.value for s in _samples(body, "fmhl_http_requests_total")
    }
    assert counts[("/test-only/items/{entry_id}", "200")] == 2
    assert counts[("unmatched", "404")] == 2
    assert counts[("/api/v1/admin/queues/dlq/{entry_id}", "401")] == 2
    assert not any("abc" in route or "random" in route for route, _ in counts)
    hist = _samples(body, "fmhl_http_request_duration_seconds_count")
    assert any(s.labels["route"] == "/test-only/items/{entry_id}" and s.value == 2 for s in hist)


async def test_openapi_describes_every_route(settings: Settings) -> None:
    async with running_app(settings) as (app, client):
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        for route in app.routes:
            path = getattr(route, "path", None)
            assert path in spec["paths"], f"{path} missing from /openapi.json"
            for method in getattr(route, "methods", set()) - {"HEAD"}:
                assert method.lower() in spec["paths"][path], f"{method} {path} undocumented"


async def test_every_log_line_is_json_with_the_request_id(
    settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    async def boom(request: Request) -> JSONResponse:
        raise RuntimeError("kaboom with secret-free text")

    configure_logging("DEBUG", "json")
    async with running_app(settings) as (app, client):
        app.router.routes.append(Route("/boom", boom, methods=["GET"]))
        capfd.readouterr()
        response = await client.get("/boom", headers={"X-Request-ID": "req-boom-1"})
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
        assert "kaboom" not in response.text
        assert response.headers["x-request-id"] == "req-boom-1"
        out = capfd.readouterr().out
    lines = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    lines = [line for line in lines if line.get("logger") != "httpx"]  # the test client, not the app
    assert lines, "the request logged nothing"
    assert all(line.get("request_id") == "req-boom-1" for line in lines), lines
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["event"] == "unhandled_exception"
    assert errors[0]["error_type"] == "RuntimeError"
    assert "kaboom" in errors[0]["stack"] and "Traceback" in errors[0]["stack"]

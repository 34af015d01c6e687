"""`fmhl-ops serve` and `fmhl-ops dev` as real processes: JSON logs, drain on SIGTERM, make run."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import orjson

from cli.embedded import free_port
from tests.procs import Proc, base_env, wait_http


def test_serve_logs_json_with_request_ids_and_drains_on_sigterm(database_url: str, redis_url: str) -> None:
    port = free_port()
    metrics_port = free_port()
    env = base_env(DATABASE_URL=database_url, REDIS_URL=redis_url, METRICS_PORT=str(metrics_port))
    proc = Proc(["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "2"], env).start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health/ready", timeout=30, proc=proc)
        assert httpx.get(f"{base}/health/live", headers={"X-Request-ID": "e2e-probe-1"}).status_code == 200
        assert httpx.get(f"{base}/openapi.json", headers={"X-Request-ID": "e2e-live-1"}).status_code == 200
        assert httpx.get(f"{base}/nope", headers={"X-Request-ID": "e2e-404-1"}).status_code == 404
        side = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert side.status_code == 200 and "fmhl_http_requests_total" in side.text
        proc.signal(signal.SIGTERM)
        time.sleep(0.3)
        draining = httpx.get(f"{base}/health/ready", timeout=5)
        assert draining.status_code == 503
        assert draining.json()["status"] == "fail"
        assert proc.wait(timeout=30) == 0
    finally:
        proc.stop()
    lines = [line for line in proc.output().splitlines() if line.strip()]
    parsed = [orjson.loads(line) for line in lines]  # every line is one JSON object
    by_request = {p.get("request_id") for p in parsed}
    assert {"e2e-live-1", "e2e-404-1"} <= by_request
    access = [p for p in parsed if p["event"] == "http_access"]
    assert access and all(p.get("request_id") for p in access)
    assert {p["route"] for p in access} >= {"/openapi.json", "unmatched"}
    assert "e2e-probe-1" not in by_request, "probes are counted, not logged"
    assert all({"time", "level", "event", "message", "module"} <= p.keys() for p in parsed)


def test_dev_serves_ready_within_60s_without_urls(tmp_path: Path) -> None:
    """What `make run` does on a fresh machine: embedded Postgres and Redis under .run/."""
    port = free_port()
    proc = Proc(["dev", "--port", str(port)], base_env(), cwd=str(tmp_path)).start()
    try:
        started = time.monotonic()
        response = wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=60, proc=proc)
        assert time.monotonic() - started < 60
        assert response.json()["checks"]["postgres:responseTime"][0]["status"] == "pass"
        assert (tmp_path / ".run" / "postgres" / "PG_VERSION").exists()
    finally:
        assert proc.stop(timeout=30) == 0, proc.output()[-3000:]
    # everything it started is gone
    leftover = [line for line in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path) in _read(line)]
    assert leftover == []


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""

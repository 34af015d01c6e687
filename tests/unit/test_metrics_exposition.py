from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.infra.metrics import Metrics


def _populated() -> Metrics:
    m = Metrics()
    m.inc(m.http_requests_total, {"method": "GET", "route": "/health/live", "status": 200})
    m.observe(m.http_request_duration_seconds, 0.02, {"method": "GET", "route": "/health/live"})
    m.observe(m.distribution_duration_seconds, 1.5, {"status": "ok"})
    m.set(m.queue_depth, 4, {"queue": "email_send"})
    m.inc(m.queue_jobs_failed_total, {"queue": "email_send", "function": "send_email", "final": "true"})
    return m


def test_exposition_parses_with_prometheus_client() -> None:
    body, content_type = _populated().render()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["fmhl_http_requests"].type == "counter"
    assert families["fmhl_http_request_duration_seconds"].type == "histogram"
    buckets = [
        s for s in families["fmhl_distribution_duration_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert any(s.labels["le"] == "2.0" and s.value == 1 for s in buckets), "2 s must be a bucket boundary"


def test_hostile_label_values_cannot_break_the_format() -> None:
    m = Metrics()
    m.inc(m.http_requests_total, {"method": "GET", "route": 'evil"}\nfmhl_fake 1', "status": 200})
    body, _ = m.render()
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    assert all(s.name != "fmhl_fake" for s in samples)
    assert any(s.labels.get("route") == "invalid" for s in samples)


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: `make test` installs Debian's prometheus package")
    body, _ = _populated().render()
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_observe_http_fast_path_matches_the_public_api() -> None:
    fast, slow = Metrics(), Metrics()
    observations = [("GET", "/health/live", 200, 0.003)] * 5 + [("POST", "/x", 500, 0.7)] * 3
    for method, route, status, seconds in observations:
        fast.observe_http(method, route, status, seconds)
        slow.inc(slow.http_requests_total, {"method": method, "route": route, "status": status})
        slow.observe(slow.http_request_duration_seconds, seconds, {"method": method, "route": route})

    def samples(m: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        body = m.render()[0].decode()
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(body)
            if f.name.startswith("fmhl_http")
            for s in f.samples
        }

    assert samples(fast) == samples(slow)
    assert (
        "fmhl_http_requests_total",
        (("method", "GET"), ("route", "/health/live"), ("status", "200")),
        5.0,
    ) in (samples(fast))

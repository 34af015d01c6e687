from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render as aioprometheus_render
from prometheus_client.parser import text_string_to_metric_families

from bench.metrics_case import populate
from shared.infra.exposition import STALE_SLACK, Exposition
from shared.infra.metrics import JOB_BUCKETS, Metrics


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


# -- shared.infra.exposition: the renderer behind Metrics.render ----------------------------------
HOSTILE = 'quote " backslash \\ newline \n end'


def _families(body: bytes) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in found, f"duplicate sample {key}"
            found[key] = s.value
    return found


def _promtool(body: bytes) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: `make test` installs Debian's prometheus package")
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    # promtool exits 0 on lint warnings too; a parse error exits non-zero
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_same_bytes_as_aioprometheus_for_every_label_set_of_the_bench() -> None:
    m = Metrics()
    populate(m)
    m.set(m.queue_paused, 0, {"queue": "email_send"})
    m.observe(m.billing_duration_seconds, 12.5)  # past every bound: only +Inf counts it
    m.set(m.db_pool_connections, 0.25, {"state": "idle"})
    reference, headers = aioprometheus_render(m.registry, [])
    body, content_type = m.render()
    assert body == reference
    assert content_type == headers["Content-Type"]
    assert m.render()[0] == reference, "the second render (from the label cache) differs"
    _promtool(body)


def test_samples_are_what_was_recorded() -> None:
    m = Metrics()
    m.inc(m.queue_jobs_enqueued_total, {"queue": "email_send"}, 3)
    m.set(m.queue_depth, 7, {"queue": "email_send"})
    m.set(m.dlq_spool_size, 2.5)
    for seconds in (0.02, 0.3, 0.3, 7.0, 99.0):
        m.observe(m.queue_job_duration_seconds, seconds, {"queue": "email_send", "function": "send_email"})
    samples = _samples(m.render()[0])

    assert samples[("fmhl_queue_jobs_enqueued_total", (("queue", "email_send"),))] == 3
    assert samples[("fmhl_queue_depth", (("queue", "email_send"),))] == 7
    assert samples[("fmhl_dlq_spool_size", ())] == 2.5
    labels = (("function", "send_email"), ("queue", "email_send"))
    buckets = {
        dict(key)["le"]: value
        for (name, key), value in samples.items()
        if name == "fmhl_queue_job_duration_seconds_bucket"
    }
    expected_bounds = [*(str(b) for b in JOB_BUCKETS), "+Inf"]
    assert list(buckets) == expected_bounds, "buckets in increasing order, +Inf last"
    assert [buckets[b] for b in expected_bounds] == [
        sum(1 for s in (0.02, 0.3, 0.3, 7.0, 99.0) if bound == "+Inf" or s <= float(bound))
        for bound in expected_bounds
    ], "cumulative counts"
    assert buckets["0.05"] == 1 and buckets["0.5"] == 3 and buckets["10.0"] == 4 and buckets["+Inf"] == 5
    assert samples[("fmhl_queue_job_duration_seconds_count", labels)] == 5
    assert samples[("fmhl_queue_job_duration_seconds_sum", labels)] == pytest.approx(106.62)
    families = _families(m.render()[0])
    assert families["fmhl_queue_job_duration_seconds"].type == "histogram"
    assert families["fmhl_queue_depth"].type == "gauge"
    assert families["fmhl_queue_jobs_enqueued"].type == "counter"
    assert families["fmhl_queue_depth"].documentation == "Jobs queued or in progress, by queue."
    # every metric is exposed, with or without samples, each once
    assert {f"# TYPE {name}" in m.render()[0].decode() for name in m.names()} == {True}


def test_label_values_are_escaped() -> None:
    """``Metrics`` replaces such values with ``invalid``; written straight to a collector (a bug
    elsewhere, or a future caller), they still come out escaped and read back unchanged."""
    m = Metrics()
    m.http_requests_total.add({"method": "GET", "route": HOSTILE, "status": "200"}, 2)
    m.http_request_duration_seconds.observe({"method": "GET", "route": HOSTILE}, 0.007)
    m.queue_depth.set({"queue": "\\"}, 1)
    body = m.render()[0]
    assert b'route="quote \\" backslash \\\\ newline \\n end"' in body
    samples = _samples(body)
    counter = (("method", "GET"), ("route", HOSTILE), ("status", "200"))
    assert samples[("fmhl_http_requests_total", counter)] == 2
    histogram = (("method", "GET"), ("route", HOSTILE))
    bucket = "fmhl_http_request_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.005"), *histogram))] == 0
    assert samples[(bucket, (("le", "0.01"), *histogram))] == 1
    assert samples[(bucket, (("le", "+Inf"), *histogram))] == 1
    assert samples[("fmhl_http_request_duration_seconds_count", histogram)] == 1
    assert samples[("fmhl_queue_depth", (("queue", "\\"),))] == 1
    assert all(name.startswith("fmhl_") for name, _ in samples), "no line was split by a newline"
    _promtool(body)


def test_help_text_is_escaped_and_const_labels_are_merged() -> None:
    registry = Registry()
    odd = Counter("odd_total", "first line\nsecond \\ line", const_labels={"zone": "a"}, registry=registry)
    odd.add({"b": 'x"y'}, 1)
    body = Exposition().render(registry.get_all())
    assert body == (
        b"# HELP odd_total first line\\nsecond \\\\ line\n"
        b"# TYPE odd_total counter\n"
        b'odd_total{b="x\\"y",zone="a"} 1\n'
    )
    family = _families(body)["odd"]
    assert family.documentation == "first line\nsecond \\ line"
    assert family.samples[0].labels == {"b": 'x"y', "zone": "a"}


def test_every_scrape_sees_current_values_and_current_series() -> None:
    m = Metrics()
    m.inc(m.emails_sent_total, {"template": "welcome", "status": "sent"})
    m.observe(m.inbox_query_duration_seconds, 0.2)
    m.replace_gauge(m.dlq_failure_kind_last_seen, [({"queue": "q", "fingerprint": "f1"}, 10.0)])
    first = _samples(m.render()[0])
    m.inc(m.emails_sent_total, {"template": "welcome", "status": "sent"}, 4)
    m.observe(m.inbox_query_duration_seconds, 3.0)
    m.replace_gauge(m.dlq_failure_kind_last_seen, [({"queue": "q", "fingerprint": "f2"}, 20.0)])
    second = _samples(m.render()[0])

    sent = ("fmhl_emails_sent_total", (("status", "sent"), ("template", "welcome")))
    assert (first[sent], second[sent]) == (1, 5)
    inbox_count = ("fmhl_inbox_query_duration_seconds_count", ())
    assert (first[inbox_count], second[inbox_count]) == (1, 2)
    assert second[("fmhl_inbox_query_duration_seconds_sum", ())] == pytest.approx(3.2)
    gauge = "fmhl_dlq_failure_kind_last_seen_timestamp_seconds"
    assert [(k, v) for (n, k), v in second.items() if n == gauge] == [
        ((("fingerprint", "f2"), ("queue", "q")), 20.0)
    ], "a dropped series is not rendered from the cache"
    assert m.render()[0] == aioprometheus_render(m.registry, [])[0]


def test_the_label_cache_forgets_dropped_series() -> None:
    m = Metrics()
    gauge = m.dlq_failure_kind_last_seen
    for n in range(STALE_SLACK * 3):
        m.replace_gauge(gauge, [({"queue": "q", "fingerprint": f"f{n}"}, float(n))])
        m.render()
    family = next(f for f in m._exposition._order if f.collector is gauge)
    assert len(family.prefixes) <= 1 + STALE_SLACK + 1


def test_a_collector_added_later_is_rendered() -> None:
    registry = Registry()
    exposition = Exposition()
    Gauge("a_gauge", "A.", registry=registry).set({}, 1)
    assert exposition.render(registry.get_all()) == b"# HELP a_gauge A.\n# TYPE a_gauge gauge\na_gauge 1\n"
    Gauge("b_gauge", "B.", registry=registry).set({}, 2.0)
    body = exposition.render(registry.get_all())
    assert body == aioprometheus_render(registry, [])[0]
    assert body.endswith(b"b_gauge 2.0\n")


def test_counts_too_large_for_the_int_shortcut_are_written_as_aioprometheus_does() -> None:
    registry = Registry()
    histogram = Histogram("big_seconds", "Big.", registry=registry, buckets=(1.0,))
    histogram.observe({"k": "v"}, 0.5)
    aggregator = histogram.get_value({"k": "v"})
    aggregator.observations = 10**16 + 2
    aggregator.buckets[1.0] = 10**16
    aggregator.buckets[float("inf")] = 10**16 + 2
    body = Exposition().render(registry.get_all())
    assert body == aioprometheus_render(registry, [])[0]
    assert b'big_seconds_bucket{k="v",le="1.0"} 1e+16\n' in body

"""Tracing is configured by the standard OTEL_* variables only, and off costs nothing: not even an
import of OpenTelemetry (checked in a fresh interpreter that loads the service and the worker)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.infra.tracing import tracing_requested


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_the_environment_asks(env: dict[str, str], on: bool) -> None:
    assert tracing_requested(env) is on


def test_off_imports_nothing_of_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from shared.infra.tracing import configure_tracing, current_ids, current_traceparent\n"
        "import service.app, worker.fmhl_worker, worker.failure, shared.jobs.enqueue, shared.dlq.capture\n"
        "assert configure_tracing('fmhl-ops', {}) is False\n"
        "assert current_ids() is None and current_traceparent() is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


_JOB_SPAN_RELATIONS = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shared.infra import tracing

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracing._tracer, tracing._enabled = trace.get_tracer("t"), True
enqueuing = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
original = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
cases = {"first": (1, None), "redrive": (1, original), "retry": (2, None), "redrive_retry": (2, original)}
out = {}
for name, (job_try, link) in cases.items():
    with tracing.job_span(
        queue="q", function="f", job_id=name, job_try=job_try, traceparent=enqueuing, link=link
    ):
        pass
    (span,) = exporter.get_finished_spans()
    exporter.clear()
    out[name] = {
        "trace": format(span.context.trace_id, "032x"),
        "parent": format(span.parent.span_id, "016x") if span.parent else None,
        "links": [
            [format(l.context.trace_id, "032x"), format(l.context.span_id, "016x"), l.attributes["fmhl.link"]]
            for l in span.links
        ],
    }
print(json.dumps(out))
"""


def test_job_span_parents_the_enqueuer_on_a_first_try_and_links_the_original_failure() -> None:
    """A first try (a DLQ retry's too) is the enqueuing span's child; the original failure of a DLQ
    retry is a Link, never the parent; a try > 1 is a new trace linked to the enqueuing context."""
    result = subprocess.run(
        [sys.executable, "-c", _JOB_SPAN_RELATIONS], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    spans = json.loads(result.stdout)
    enqueuing, original = ["a" * 32, "b" * 16], ["c" * 32, "d" * 16]
    assert spans["first"] == {"trace": "a" * 32, "parent": "b" * 16, "links": []}
    assert spans["redrive"] == {"trace": "a" * 32, "parent": "b" * 16, "links": [[*original, "redrive"]]}
    assert spans["retry"]["trace"] != "a" * 32 and spans["retry"]["parent"] is None
    assert spans["retry"]["links"] == [[*enqueuing, "retry"]]
    assert spans["redrive_retry"]["parent"] is None
    assert spans["redrive_retry"]["links"] == [[*enqueuing, "retry"], [*original, "redrive"]]

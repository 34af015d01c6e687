"""Tracing is configured by the standard OTEL_* variables only, and off costs nothing: not even an
import of OpenTelemetry (checked in a fresh interpreter that loads the service and the worker)."""

from __future__ import annotations

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

"""Every ``make bench`` case once at toy size, so none rots between benchmark runs.

Figures at this size mean nothing (and targets are not asserted); what is asserted is that each
case runs end to end against the real servers and processes, and that the correctness checks the
cases carry hold: exactly one DLQ row per stormed job, cleanup deleted every old row and only
those, reconciliation found exactly the injected drifts.
"""

from __future__ import annotations

import math

import pytest

from bench.__main__ import CASES, run_cases, table
from bench.common import SCALES, meets, percentile, quiet_stdout
from tests.infra import Backends

# serial: runs every bench case: CPU-heavy, and its rates are what it reports
pytestmark = [pytest.mark.e2e, pytest.mark.serial]


def test_targets_and_percentiles() -> None:
    assert meets(0.9, ">= 0.9") and not meets(0.89, ">= 0.9")
    assert meets(49.9, "< 50") and not meets(50, "< 50")
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0


@pytest.mark.timeout(120)
async def test_every_case_runs_at_toy_size(test_backends: Backends) -> None:
    # console: owned and smoke-tested elsewhere; tracing: its own test below (processes of its own)
    names = [name for name in CASES if name not in ("console", "tracing")]
    with quiet_stdout():
        results = await run_cases(
            SCALES["toy"],
            names,
            admin_dsn=test_backends.postgres_admin_dsn,
            redis_url=test_backends.redis_url,
        )
    print(table(results))

    errors = [r for r in results if r.metric == "ERROR"]
    assert not errors, errors
    wrong = [r for r in results if "WRONG" in r.note or "FAILED" in r.note]
    assert not wrong, wrong
    cases = {r.case for r in results}
    expected = {
        "worker overhead", "failure storm", "scale-out", "/health/live", "DLQ list, first page",
        "GET …/dlq/groups", "GET /api/v1/admin/queues", "POST …/dlq/{id}/retry", "service RSS",
        "/metrics render", "cleanup while capturing", "reconciliation", "live jobs", "login burst", "redrive",
    }  # fmt: skip
    assert expected <= cases, expected - cases
    for result in results:
        assert math.isfinite(result.value) and result.value > 0, result
    exactly_once = [r for r in results if r.metric == "rounds with exactly one DLQ row per job"]
    assert [r.passed for r in exactly_once] == [True], exactly_once
    storm = {r.metric for r in results if r.case == "failure storm"}
    assert {
        "150 failures, fmhl-ops worker vs arq + one INSERT",
        "150 failures, fmhl-ops worker vs bare arq",
        "Redis commands per job (INFO commandstats), ours vs bare arq",
    } <= storm, storm
    scale_out = [r for r in results if r.case == "scale-out"]
    assert [r.baseline is not None and r.baseline > 0 for r in scale_out] == [True], scale_out


@pytest.mark.timeout(120)
async def test_tracing_case_runs_at_toy_size(test_backends: Backends) -> None:
    """Three ``serve`` processes and three worker processes (unconfigured, OTEL_SDK_DISABLED, OTLP
    exporter on); the case itself fails unless the exporter side's worker delivered spans to the sink
    and each worker process had tracing on or off as its environment says."""
    with quiet_stdout():
        results = await run_cases(
            SCALES["toy"],
            ["tracing"],
            admin_dsn=test_backends.postgres_admin_dsn,
            redis_url=test_backends.redis_url,
        )
    print(table(results))
    rows = [r for r in results if r.case.startswith("tracing")]
    assert [r.metric for r in results if r.metric == "ERROR"] == [], results
    assert len(rows) == 4, rows
    for row in rows:
        assert row.baseline is not None and row.baseline > 0 and row.ratio is not None and row.ratio > 0, row
    assert [r.target for r in rows] == [">= 0.97", None, ">= 0.97", None]
    exported = [r.note for r in rows if r.case == "tracing: no-op worker" and "exporter" in r.metric]
    assert exported and not exported[0].startswith("0 "), exported

"""Every reliability test prints what it measured; this shows those lines in the run's summary
(pytest captures them otherwise), so ``make test`` output carries the counts and percentiles."""

from __future__ import annotations

from typing import Any

_MEASURED: list[tuple[str, list[str]]] = []


def _measurement_lines(text: str) -> list[str]:
    # our own print() lines; JSON log lines of in-process code are left out
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("{")]


def pytest_runtest_logreport(report: Any) -> None:
    if report.when != "call" or not report.nodeid.startswith("tests/reliability/"):
        return
    lines = _measurement_lines(report.capstdout or "")
    if lines:
        _MEASURED.append((f"{report.nodeid} [{report.outcome}]", lines))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _MEASURED:
        return
    terminalreporter.section("reliability: what was measured")
    for nodeid, lines in _MEASURED:
        terminalreporter.write_line(nodeid)
        for line in lines[:60]:
            terminalreporter.write_line(f"    {line[:300]}")

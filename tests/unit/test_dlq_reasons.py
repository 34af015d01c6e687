"""The DLQ reasons are defined once (``shared.dlq.reasons``); the SQL check and the code agree."""

from __future__ import annotations

import re
from pathlib import Path

from shared.dlq.reasons import CONTROL_REASONS, DLQ_REASONS, FAILURE_REASONS
from worker.failure_records import SILENT_ERROR_TYPES

SQL = Path(__file__).resolve().parents[2] / "sql"
CHECK = re.compile(r"reason\s+IN\s*\(([^)]*)\)", re.IGNORECASE | re.DOTALL)


def _latest_sql_reasons() -> set[str]:
    latest: set[str] = set()
    for path in sorted(SQL.glob("*.sql")):
        text = path.read_text()
        if "reason" not in text or "dead_letter_queue" not in text:
            continue
        for match in CHECK.finditer(text):
            values = set(re.findall(r"'([a-z_]+)'", match.group(1)))
            if "exhausted" in values:  # the DLQ reason check, not another table's
                latest = values
    return latest


def test_the_sql_check_allows_exactly_the_shared_reasons() -> None:
    assert _latest_sql_reasons() == set(DLQ_REASONS)


def test_reasons_are_unique_and_the_worker_uses_known_ones() -> None:
    assert len(DLQ_REASONS) == len(set(DLQ_REASONS))
    assert set(CONTROL_REASONS) == {"cancelled", "aborted"}
    assert set(SILENT_ERROR_TYPES) <= set(FAILURE_REASONS)


def test_queue_stats_leave_out_exactly_the_control_reasons() -> None:
    """``failed_last_hour`` counts failures, not an operator's cancels and aborts."""
    from shared.jobs.stats import DLQ_COUNTS

    found = re.search(r"reason NOT IN \(([^)]*)\)", DLQ_COUNTS)
    assert found
    assert set(re.findall(r"'([a-z_]+)'", found.group(1))) == set(CONTROL_REASONS)

"""New and regressed failure kinds (Sentry's "new issue" and "regression" alerts for job queues).

A failure group (fingerprint, queue, function, error type) is *new* the first time it is seen and
*regressed* when it fails again after all its entries were resolved. Both are decided by
Postgres in the capture's own statement (``sql/008``: the ``dlq_groups`` insert trigger, in the
group rows' lock order, so concurrent captures of one new failure count it once): the group row
keeps the latest kind and when (the console marks it while the group has unresolved entries), and
each occurrence is one row of ``dlq_failure_kinds``. Capture itself does nothing more.

The service exports at scrape, with the other DLQ gauges:

* ``fmhl_dlq_failure_kinds_total{queue,kind}``: a counter read from ``dlq_failure_kinds`` (so it
  survives restarts and every replica exports the same value; the rules take ``max``);
* ``fmhl_dlq_failure_kind_last_seen_timestamp_seconds{queue,kind,fingerprint}``: one series per
  queue and kind, the latest such group, so alert ``DLQNewFailureKind`` can link to it.

Cleanup never deletes ``dlq_failure_kinds`` rows (one per new or regressed group: small); a group
pruned away entirely is *new* again when it comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from shared.infra.db import fetch
from shared.infra.metrics import Metrics

FailureKind = Literal["new", "regressed"]


@dataclass(frozen=True, slots=True)
class FailureKindTotals:
    counts: dict[tuple[str, str], int]  # (queue, kind) -> occurrences ever
    latest: dict[tuple[str, str], tuple[str, datetime]]  # (queue, kind) -> (fingerprint, seen at)


FAILURE_KIND_COUNTS = """
SELECT queue_name, kind, count(*) AS n FROM dlq_failure_kinds GROUP BY queue_name, kind
"""

LATEST_FAILURE_KINDS = """
SELECT DISTINCT ON (queue_name, kind) queue_name, kind, fingerprint, seen_at
FROM dlq_failure_kinds ORDER BY queue_name, kind, id DESC
"""


async def read_failure_kinds(pool: Any) -> FailureKindTotals:
    async with pool.acquire() as conn:
        counts = await fetch(conn, "dlq_failure_kind_counts", FAILURE_KIND_COUNTS)
        latest = await fetch(conn, "dlq_failure_kind_latest", LATEST_FAILURE_KINDS)
    return FailureKindTotals(
        counts={(r["queue_name"], r["kind"]): int(r["n"]) for r in counts},
        latest={(r["queue_name"], r["kind"]): (r["fingerprint"], r["seen_at"]) for r in latest},
    )


def export_failure_kinds(totals: FailureKindTotals, metrics: Metrics) -> None:
    for (queue, kind), count in totals.counts.items():
        metrics.set_total(metrics.dlq_failure_kinds_total, count, {"queue": queue, "kind": kind})
    metrics.replace_gauge(
        metrics.dlq_failure_kind_last_seen,
        [
            ({"queue": queue, "kind": kind, "fingerprint": fingerprint}, seen_at.timestamp())
            for (queue, kind), (fingerprint, seen_at) in totals.latest.items()
        ],
    )

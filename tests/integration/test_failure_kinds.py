"""New and regressed failure kinds (sql/008, shared/dlq/failure_kinds.py) on real Postgres:
first sighting and regression after resolution each counted once (concurrent captures too),
the group marker, the exported counter and last-seen gauge, and the real ``/metrics`` route."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shared.dlq.browse import group_entries
from shared.dlq.failure_kinds import export_failure_kinds, read_failure_kinds
from shared.infra.config import Settings
from shared.infra.metrics import Metrics
from tests.factories import create_dlq_entry
from tests.helpers import running_app


async def _kinds(pool: Any) -> list[tuple[str, str, str]]:
    rows = await pool.fetch("SELECT queue_name, fingerprint, kind FROM dlq_failure_kinds ORDER BY id")
    return [(r["queue_name"], r["fingerprint"], r["kind"]) for r in rows]


async def test_first_sighting_is_new_and_a_failure_after_resolution_is_regressed(clean_db: Any) -> None:
    await create_dlq_entry(clean_db, fingerprint="fp-a")
    await create_dlq_entry(clean_db, fingerprint="fp-a")  # the group has unresolved entries: nothing
    assert await _kinds(clean_db) == [("email_send", "fp-a", "new")]
    (group,) = await group_entries(clean_db, queue="email_send", resolved=False)
    assert group.kind == "new" and group.kind_at is not None

    await clean_db.execute(
        "UPDATE dead_letter_queue SET resolved_at = now(), resolved_by = 't', resolution = 'manual'"
    )
    assert await group_entries(clean_db, queue="email_send", resolved=None) != []
    (resolved_group,) = await group_entries(clean_db, queue="email_send", resolved=None)
    assert resolved_group.kind is None  # no marker once nothing is unresolved

    await create_dlq_entry(clean_db, fingerprint="fp-a")
    assert await _kinds(clean_db) == [("email_send", "fp-a", "new"), ("email_send", "fp-a", "regressed")]
    (group,) = await group_entries(clean_db, queue="email_send", resolved=False)
    assert group.kind == "regressed"

    # a row stored already resolved (an operator's cancel) makes no kind
    await create_dlq_entry(
        clean_db, fingerprint="fp-cancel", reason="cancelled", resolved_at=datetime.now(UTC)
    )
    # the same fingerprint on another queue is another group
    await create_dlq_entry(clean_db, fingerprint="fp-a", queue_name="report_export", function="export_report")
    assert await _kinds(clean_db) == [
        ("email_send", "fp-a", "new"),
        ("email_send", "fp-a", "regressed"),
        ("report_export", "fp-a", "new"),
    ]


async def test_concurrent_first_captures_of_one_failure_count_it_once(clean_db: Any) -> None:
    async def capture_in_own_transaction() -> None:
        async with clean_db.acquire() as conn, conn.transaction():
            await create_dlq_entry(conn, fingerprint="fp-race")
            await asyncio.sleep(0.05)  # both inserts in flight before either commits

    await asyncio.gather(*(capture_in_own_transaction() for _ in range(8)))
    assert await _kinds(clean_db) == [("email_send", "fp-race", "new")]


def _samples(metrics: Metrics, name: str) -> list[tuple[dict[str, str], float]]:
    body, _ = metrics.render()
    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == name
    ]


async def test_counter_and_latest_gauge_are_exported(clean_db: Any) -> None:
    metrics = Metrics()
    await create_dlq_entry(clean_db, fingerprint="fp-1")
    export_failure_kinds(await read_failure_kinds(clean_db), metrics)
    await create_dlq_entry(clean_db, fingerprint="fp-2")
    export_failure_kinds(await read_failure_kinds(clean_db), metrics)
    assert _samples(metrics, "fmhl_dlq_failure_kinds_total") == [
        ({"queue": "email_send", "kind": "new"}, 2.0)
    ]
    latest = _samples(metrics, "fmhl_dlq_failure_kind_last_seen_timestamp_seconds")
    assert [labels for labels, _ in latest] == [{"queue": "email_send", "kind": "new", "fingerprint": "fp-2"}]


async def test_metrics_route_exports_failure_kinds(settings: Settings, clean_db: Any, redis: Any) -> None:
    await create_dlq_entry(clean_db, fingerprint="fp-route", queue_name="distribute_lead")
    async with running_app(settings) as (_, client):
        body = (await client.get("/metrics")).text
    assert 'fmhl_dlq_failure_kinds_total{kind="new",queue="distribute_lead"} 1' in body or (
        'fmhl_dlq_failure_kinds_total{queue="distribute_lead",kind="new"} 1' in body
    ), [line for line in body.splitlines() if "failure_kind" in line]
    assert 'fingerprint="fp-route"' in body

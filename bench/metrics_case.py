"""``GET /metrics`` with every label set populated: the largest exposition a process can render.

Every metric gets every value its bounded label sets allow: HTTP series for each route template,
its methods and a dozen statuses; queue series for every catalogue function on its queue (final
true and false); a ``db_query_duration_seconds`` series for every query name in the source; every
cron job, email template, outcome and reason. The render is then timed through the app's real
``/metrics`` route and middleware (in process, ``httpx.ASGITransport``), scrape-gauge refresh
included (it reads Redis and Postgres at most every few seconds).

The baseline is aioprometheus's own renderer through the same route, timed in the same run in
alternating rounds; both must write the same bytes (a difference is reported as WRONG).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from aioprometheus.renderer import render as aioprometheus_render

from bench.common import Backends, Result, Scale, latencies_ms, percentile, progress
from service.app import api_operations, create_app
from shared.email.templates import TEMPLATES
from shared.infra.config import Settings
from shared.infra.logs import configure_logging
from shared.infra.metrics import Metrics
from shared.jobs.catalogue import JOB_CATALOGUE
from shared.jobs.queues import ALL_QUEUES
from worker.cron import CRON_NAMES

REPO_ROOT = Path(__file__).resolve().parent.parent
HTTP_STATUSES = (200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 429, 500, 503)
QUERY_NAME = re.compile(r"\b(?:fetch|fetchrow|fetchval|execute)\(\s*\w+,\s*\"([a-z0-9_]+)\"", re.S)


def query_names() -> list[str]:
    names: set[str] = set()
    for package in ("shared", "service", "worker"):
        for path in (REPO_ROOT / package).rglob("*.py"):
            names.update(QUERY_NAME.findall(path.read_text()))
    return sorted(names)


def populate(metrics: Metrics) -> int:
    """Fill every label set; returns the number of series written."""
    return _http(metrics) + _queues(metrics) + _database(metrics) + _cron_and_domain(metrics)


def _http(metrics: Metrics) -> int:
    series = 0
    for operation in api_operations():
        # Starlette answers HEAD on every GET route: those label sets exist too
        for method in (operation.method, "HEAD") if operation.method == "GET" else (operation.method,):
            for status in HTTP_STATUSES:
                metrics.observe_http(method, operation.path, status, 0.003)
                series += 1
    return series


def _queues(metrics: Metrics) -> int:
    series = 0
    for spec in JOB_CATALOGUE:
        labels = {"queue": spec.queue, "function": spec.name}
        metrics.inc(metrics.queue_jobs_completed_total, labels)
        metrics.observe(metrics.queue_job_duration_seconds, 0.2, labels)
        for final in ("true", "false"):
            metrics.inc(metrics.queue_jobs_failed_total, {**labels, "final": final})
        series += 4
    for queue in ALL_QUEUES:
        for gauge in (metrics.queue_depth, metrics.queue_oldest_job_age_seconds, metrics.dlq_size):
            metrics.set(gauge, 1, {"queue": queue})
        metrics.inc(metrics.queue_jobs_enqueued_total, {"queue": queue})
        metrics.inc(metrics.dlq_captured_total, {"queue": queue})
        series += 5
    metrics.set(metrics.dlq_spool_size, 0)
    return series + 1


def _database(metrics: Metrics) -> int:
    names = query_names()
    for name in names:
        metrics.observe(metrics.db_query_duration_seconds, 0.002, {"query": name})
    for state in ("busy", "idle", "max"):
        metrics.set(metrics.db_pool_connections, 1, {"state": state})
    return len(names) + 3


def _cron_and_domain(metrics: Metrics) -> int:
    series = 0
    for name in CRON_NAMES:
        for status in ("success", "failure"):
            metrics.inc(metrics.cron_runs_total, {"cron_job": name, "status": status})
        metrics.set(metrics.cron_last_success_timestamp_seconds, 1.7e9, {"cron_job": name})
        series += 3
    for template in TEMPLATES:
        for status in ("sent", "duplicate", "failed"):
            metrics.inc(metrics.emails_sent_total, {"template": template, "status": status})
            series += 1
    for outcome in ("assigned", "unassigned", "already_distributed", "busy"):
        metrics.inc(metrics.leads_distributed_total, {"outcome": outcome})
        metrics.observe(metrics.distribution_duration_seconds, 0.1, {"status": outcome})
        series += 2
    for reason in ("insufficient_balance", "serialization", "error"):
        metrics.inc(metrics.billing_failures_total, {"reason": reason})
        series += 1
    for action in ("corrected", "alerted"):
        metrics.inc(metrics.balance_discrepancies_total, {"action": action})
        series += 1
    for counter in (
        metrics.lead_assignments_total,
        metrics.bad_leads_total,
        metrics.refunds_total,
        metrics.subscriptions_reactivated_total,
    ):
        metrics.inc(counter)
        series += 1
    metrics.observe(metrics.billing_duration_seconds, 0.01)
    metrics.observe(metrics.inbox_query_duration_seconds, 0.05)
    return series + 2


def reference_render(metrics: Metrics) -> tuple[bytes, str]:
    """The exposition as aioprometheus renders it (what ``Metrics.render`` did before)."""
    body, headers = aioprometheus_render(metrics.registry, [])
    return body, str(headers["Content-Type"])


@contextlib.contextmanager
def rendering_with_aioprometheus(metrics: Metrics) -> Iterator[None]:
    metrics.render = lambda: reference_render(metrics)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del metrics.render


async def metrics_case(backends: Backends, scale: Scale) -> list[Result]:
    metrics = Metrics()
    series = populate(metrics)
    progress(f"/metrics render: {series:,} label sets populated, {scale.latency_samples} scrapes a side")
    settings = Settings(database_url=backends.database_url, redis_url=backends.redis_url)
    configure_logging("INFO", "json")
    app = create_app(settings, metrics_registry=metrics)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.ops.db.connected.wait(), timeout=30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            size = 0
            cpu_ms: list[float] = []  # this process's CPU per scrape: less swayed by a busy machine

            async def scrape() -> None:
                nonlocal size
                started = time.process_time()
                response = await client.get("/metrics")
                cpu_ms.append(1000 * (time.process_time() - started))
                if response.status_code != 200:
                    raise RuntimeError(f"/metrics -> {response.status_code}")
                size = len(response.content)

            for _ in range(3):
                await scrape()
            ours: list[float] = []
            baseline: list[float] = []
            ours_cpu: list[float] = []
            baseline_cpu: list[float] = []
            per_round = max(1, scale.latency_samples // scale.rounds)
            for _ in range(scale.rounds):
                cpu_ms.clear()
                ours.extend(await latencies_ms(scrape, per_round))
                ours_cpu.extend(cpu_ms)
                cpu_ms.clear()
                with rendering_with_aioprometheus(metrics):
                    baseline.extend(await latencies_ms(scrape, per_round))
                baseline_cpu.extend(cpu_ms)
            same = metrics.render() == reference_render(metrics)  # with the scrape gauges set too
    p95, base_p95 = percentile(ours, 95), percentile(baseline, 95)
    check = "same bytes as aioprometheus" if same else "WRONG: differs from aioprometheus's exposition"
    return [
        Result(
            "/metrics render",
            "p95 latency, every label set populated",
            p95,
            "ms",
            baseline=base_p95,
            target="< 10",
            note=(
                f"p50 {percentile(ours, 50):.1f} ms, {series:,} label sets, {size / 1024:.0f} KiB, "
                f"n={len(ours)}; baseline = aioprometheus's renderer through the same route, "
                f"alternating rounds: p50 {percentile(baseline, 50):.1f} ms, p95 {base_p95:.1f} ms "
                f"(ours {base_p95 / p95:.1f}x faster at p95), n={len(baseline)}; CPU per scrape "
                f"p50/p95 ours {percentile(ours_cpu, 50):.1f}/{percentile(ours_cpu, 95):.1f} ms, "
                f"baseline {percentile(baseline_cpu, 50):.1f}/{percentile(baseline_cpu, 95):.1f} ms; {check}"
            ),
        )
    ]

"""Every Prometheus metric fmhl-ops defines, in one registry per process.

This is the only module that imports aioprometheus (unmaintained since 2023-12: its renderer
does not escape label values and is slow, so ``shared.infra.exposition`` renders its collectors;
its ASGI middleware has no latency histogram). Label values passed here must come from bounded
sets: route templates, queue and function names, enums. Never raw paths or error text.
``_label`` enforces that defensively by replacing anything outside a conservative character set,
so a bug elsewhere cannot grow the series count without bound (the renderer escapes any value).

One ``Metrics`` object is built per process at its entrypoint and passed down (no module-level
registry), so tests can build a fresh one and assert on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry

from shared.infra.exposition import CONTENT_TYPE, Exposition

# Latency buckets (seconds). Alert thresholds must be bucket boundaries:
# DistributionDurationHigh at 2 s, InboxQuerySlow at 1 s.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
DISTRIBUTION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
DB_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INBOX_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

MAX_CACHED_HTTP_LABEL_SETS = 4096
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9_./:{}\-]{0,128}$")


def _label(value: object) -> str:
    text = str(value)
    return text if _SAFE_LABEL.match(text) else "invalid"


def _labels(labels: Mapping[str, object]) -> dict[str, str]:
    return {key: _label(value) for key, value in labels.items()}


class Metrics:
    """The process's metrics. Attribute names match the metric names without ``fmhl_``."""

    def __init__(self) -> None:
        self.registry = Registry()
        self._exposition = Exposition()
        self._http_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        # HTTP
        self.http_requests_total = Counter(
            "fmhl_http_requests_total", "HTTP requests by method, route template and status.", registry=r
        )
        self.http_request_duration_seconds = Histogram(
            "fmhl_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            registry=r,
            buckets=HTTP_BUCKETS,
        )
        # Domain
        self.leads_distributed_total = Counter(
            "fmhl_leads_distributed_total", "Leads processed by distribution, by outcome.", registry=r
        )
        self.lead_assignments_total = Counter(
            "fmhl_lead_assignments_total", "Lead assignments created (one per provider charged).", registry=r
        )
        self.bad_leads_total = Counter("fmhl_bad_leads_total", "Assignments marked bad.", registry=r)
        self.refunds_total = Counter("fmhl_refunds_total", "Refunds written to the ledger.", registry=r)
        self.billing_failures_total = Counter(
            "fmhl_billing_failures_total", "Billing transactions that failed, by reason.", registry=r
        )
        self.distribution_duration_seconds = Histogram(
            "fmhl_distribution_duration_seconds",
            "Time to distribute one lead, by status.",
            registry=r,
            buckets=DISTRIBUTION_BUCKETS,
        )
        self.billing_duration_seconds = Histogram(
            "fmhl_billing_duration_seconds",
            "Time of one provider's billing transaction.",
            registry=r,
            buckets=DB_BUCKETS,
        )
        self.inbox_query_duration_seconds = Histogram(
            "fmhl_inbox_query_duration_seconds",
            "Time of the provider inbox query used by report exports.",
            registry=r,
            buckets=INBOX_BUCKETS,
        )
        self.emails_sent_total = Counter(
            "fmhl_emails_sent_total", "Emails handled by template and status.", registry=r
        )
        # Queues
        self.queue_jobs_enqueued_total = Counter(
            "fmhl_queue_jobs_enqueued_total", "Jobs enqueued, by queue.", registry=r
        )
        self.queue_jobs_completed_total = Counter(
            "fmhl_queue_jobs_completed_total", "Jobs completed successfully.", registry=r
        )
        self.queue_jobs_failed_total = Counter(
            "fmhl_queue_jobs_failed_total",
            "Job failures; final=true when the job went to the DLQ, false when it will be retried.",
            registry=r,
        )
        self.queue_job_duration_seconds = Histogram(
            "fmhl_queue_job_duration_seconds",
            "Job run time by queue and function.",
            registry=r,
            buckets=JOB_BUCKETS,
        )
        self.queue_depth = Gauge("fmhl_queue_depth", "Jobs queued or in progress, by queue.", registry=r)
        self.queue_oldest_job_age_seconds = Gauge(
            "fmhl_queue_oldest_job_age_seconds", "Age of the oldest due job, by queue.", registry=r
        )
        self.queue_paused = Gauge(
            "fmhl_queue_paused", "1 while the queue is paused (its workers start no job), else 0.", registry=r
        )
        self.dlq_size = Gauge("fmhl_dlq_size", "Unresolved dead-letter entries, by queue.", registry=r)
        self.jobs_quarantined_total = Counter(
            "fmhl_jobs_quarantined_total",
            "Poison jobs quarantined at pickup (their tries kept vanishing with their worker).",
            registry=r,
        )
        self.dlq_failure_kinds_total = Counter(
            "fmhl_dlq_failure_kinds_total",
            "Failure groups seen for the first time (kind=new) or again after all were resolved (regressed).",
            registry=r,
        )
        self.dlq_failure_kind_last_seen = Gauge(
            "fmhl_dlq_failure_kind_last_seen_timestamp_seconds",
            "When the latest new or regressed failure group of a queue was seen, with its fingerprint.",
            registry=r,
        )
        self.dlq_captured_total = Counter(
            "fmhl_dlq_captured_total", "Jobs captured into the dead-letter queue, by queue.", registry=r
        )
        self.dlq_spool_size = Gauge(
            "fmhl_dlq_spool_size", "DLQ records waiting in the Redis spool for Postgres.", registry=r
        )
        self.dlq_spool_rejected = Gauge(
            "fmhl_dlq_spool_rejected",
            "DLQ records Postgres refused, parked in Redis for an operator (shared.dlq.rejects).",
            registry=r,
        )
        # Redrive tasks (shared.redrive_tasks): labels by queue, never by task id
        self.redrive_jobs_total = Counter(
            "fmhl_redrive_jobs_total",
            "Redrive task items by queue and outcome (sent, succeeded, failed_again, skipped).",
            registry=r,
        )
        self.redrive_tripped_total = Counter(
            "fmhl_redrive_tripped_total", "Redrive tasks stopped by their breaker, by queue.", registry=r
        )
        self.redrive_tasks = Gauge("fmhl_redrive_tasks", "Redrive tasks by state.", registry=r)
        # Database
        self.db_query_duration_seconds = Histogram(
            "fmhl_db_query_duration_seconds",
            "Query time by stable query name.",
            registry=r,
            buckets=DB_BUCKETS,
        )
        self.db_pool_connections = Gauge(
            "fmhl_db_pool_connections", "asyncpg pool connections by state (busy, idle, max).", registry=r
        )
        self.db_pool_wait_seconds = Histogram(
            "fmhl_db_pool_wait_seconds",
            "Time to get a connection from this process's asyncpg pool (waits when all are busy).",
            registry=r,
            buckets=DB_BUCKETS,
        )
        # Cron
        self.cron_runs_total = Counter("fmhl_cron_runs_total", "Cron runs by job and status.", registry=r)
        self.cron_last_success_timestamp_seconds = Gauge(
            "fmhl_cron_last_success_timestamp_seconds",
            "Unix time of the last successful run, by cron job.",
            registry=r,
        )
        self.balance_discrepancies_total = Counter(
            "fmhl_balance_discrepancies_total",
            "Balance discrepancies found by reconciliation, by action (corrected, alerted).",
            registry=r,
        )
        self.subscriptions_reactivated_total = Counter(
            "fmhl_subscriptions_reactivated_total", "Providers reactivated after a top-up.", registry=r
        )

    # Thin typed wrappers: every caller goes through these, so label sanitising is in one place.
    @staticmethod
    def inc(counter: Counter, labels: Mapping[str, object] | None = None, amount: float = 1.0) -> None:
        counter.add(_labels(labels or {}), amount)

    @staticmethod
    def observe(histogram: Histogram, value: float, labels: Mapping[str, object] | None = None) -> None:
        histogram.observe(_labels(labels or {}), value)

    @staticmethod
    def set(gauge: Gauge, value: float, labels: Mapping[str, object] | None = None) -> None:
        gauge.set(_labels(labels or {}), value)

    @staticmethod
    def set_total(counter: Counter, value: float, labels: Mapping[str, object] | None = None) -> None:
        """A counter whose total is kept elsewhere (a table) and read at scrape."""
        counter.set(_labels(labels or {}), value)

    @staticmethod
    def replace_gauge(gauge: Gauge, samples: list[tuple[Mapping[str, object], float]]) -> None:
        """Exactly these label sets (older ones dropped): for labels that change, like a fingerprint."""
        gauge.values.clear()
        for labels, value in samples:
            gauge.set(_labels(labels), value)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request: the counter and the histogram (the hot path of every request).

        The first request of a (method, route, status) goes through aioprometheus's public API;
        later ones reuse the label set's storage key and histogram aggregator, skipping the
        per-call label validation and key serialisation (~6 % of a probe's cost).
        """
        key = (method, route, status)
        cached = self._http_series.get(key)
        if cached is not None:
            counter_key, histogram = cached
            store = self.http_requests_total.values.store
            store[counter_key] = store.get(counter_key, 0) + 1.0
            histogram.observe(seconds)
            return
        counter_labels = _labels({"method": method, "route": route, "status": status})
        histogram_labels = _labels({"method": method, "route": route})
        self.http_requests_total.add(counter_labels, 1.0)
        self.http_request_duration_seconds.observe(histogram_labels, seconds)
        if len(self._http_series) < MAX_CACHED_HTTP_LABEL_SETS:
            values = self.http_requests_total.values
            self._http_series[key] = (
                values.__keytransform__(counter_labels),  # type: ignore[no-untyped-call]
                self.http_request_duration_seconds.get_value(histogram_labels),
            )

    def names(self) -> list[str]:
        """Names of every metric in this registry (used by the dashboard coverage test)."""
        return sorted(self.registry.collectors)

    def render(self) -> tuple[bytes, str]:
        """Render the text exposition format; returns (body, content type).

        ``shared.infra.exposition`` writes what aioprometheus's renderer would (escaped where that
        one is not), formatting only values at each scrape: its generic renderer re-sorted and
        re-joined every label set of every sample line, 19 ms for the bench's 817 label sets.
        """
        return self._exposition.render(self.registry.get_all()), CONTENT_TYPE

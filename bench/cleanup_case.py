"""Cleanup of old resolved DLQ rows while captures continue.

Seeds ``cleanup_rows`` resolved rows that failed 60-90 days ago (the same fingerprints as the main
data set, so deletes and captures update the same ``dlq_groups`` counter rows), then runs the
product's ``cleanup_dlq`` (retention 45 days: the main data set, at most 30 days old, is not
touched) while ``CAPTURE_STREAMS`` concurrent streams capture a failure every ``CAPTURE_PAUSE_S``
through the product's ``capture`` (group commit included). Every capture must be stored in
Postgres (not spooled) and the slowest one must stay under 100 ms. Capture latency with no
cleanup running is measured first, as the baseline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg

from bench.common import Backends, Result, Scale, percentile, progress, quiet_stdout
from bench.dlq_data import analyze, seed_dlq
from shared.dlq.capture import FailureRecord, capture
from shared.dlq.cleanup import cleanup_dlq
from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.logs import configure_logging
from shared.infra.metrics import Metrics
from shared.infra.redis import create_redis

CAPTURE_STREAMS = 4
CAPTURE_PAUSE_S = 0.01
BASELINE_SECONDS = 3.0
RETENTION_DAYS = 45
QUEUES = ("distribute_lead", "email_send", "report_export")
FUNCTIONS = ("distribute_lead", "send_email", "export_report")
ERROR_TYPES = ("ValueError", "SMTPServerDisconnected", "TimeoutError", "KeyError", "NotFound")


def record(n: int, fingerprints: int) -> FailureRecord:
    """A failure of the same group as seeded failure ``n % fingerprints`` (bench.dlq_data)."""
    f = n % fingerprints
    return FailureRecord(
        queue=QUEUES[f % 3],
        job_id=f"bench-cleanup-capture-{uuid.uuid4().hex}",
        function=FUNCTIONS[f % 3],
        args=[n],
        kwargs={"to": f"user{n}@example.test"},
        error_type=ERROR_TYPES[f % 5],
        error_message=f"failure number {f} while handling item {n}",
        stack_trace='Traceback (most recent call last):\n  File "worker/jobs.py", line 42, in run\n',
        fingerprint=f"bench{f:011d}",
        attempts=1,
        reason="permanent",
        failed_at=datetime.now(UTC),
    )


async def _capture_streams(
    db: Database, redis: object, fingerprints: int, stop: asyncio.Event
) -> list[float]:
    latencies: list[float] = []
    failures: list[str] = []
    metrics = Metrics()

    async def stream(offset: int) -> None:
        n = offset
        while not stop.is_set():
            started = time.perf_counter()
            outcome = await capture(db, redis, record(n, fingerprints), metrics)
            latencies.append(1000 * (time.perf_counter() - started))
            if outcome != "stored":
                failures.append(outcome)
            n += CAPTURE_STREAMS
            await asyncio.sleep(CAPTURE_PAUSE_S)

    await asyncio.gather(*(stream(i) for i in range(CAPTURE_STREAMS)))
    if failures:
        raise RuntimeError(f"{len(failures)} captures were not stored in Postgres: {sorted(set(failures))}")
    return latencies


async def cleanup_case(backends: Backends, scale: Scale) -> list[Result]:
    rows = scale.cleanup_rows
    progress(f"cleanup: seeding {rows:,} resolved rows 60-90 days old")
    conn = await asyncpg.connect(backends.database_url)
    try:
        await seed_dlq(
            conn,
            rows,
            scale.fingerprints,
            prefix="old-",
            older_than_seconds=60 * 86_400,
            unresolved_every=0,
        )
        await analyze(conn)
    finally:
        await conn.close()

    configure_logging("INFO", "json")
    settings = Settings(database_url=backends.database_url, redis_url=backends.redis_url)
    db = Database(settings, application_name="fmhl-bench-cleanup", metrics=Metrics())
    redis = create_redis(backends.redis_url)
    db.start()
    try:
        with quiet_stdout():
            await asyncio.wait_for(db.connected.wait(), timeout=30)
            progress(f"cleanup: capture latency alone for {BASELINE_SECONDS:.0f} s")
            stop = asyncio.Event()
            alone = asyncio.ensure_future(_capture_streams(db, redis, scale.fingerprints, stop))
            await asyncio.sleep(BASELINE_SECONDS)
            stop.set()
            baseline = await alone
            progress(
                f"cleanup: cleanup_dlq(retention {RETENTION_DAYS} d) with {CAPTURE_STREAMS} capture streams"
            )
            stop = asyncio.Event()
            during = asyncio.ensure_future(_capture_streams(db, redis, scale.fingerprints, stop))
            started = time.perf_counter()
            deleted, batches, failure = 0, 0, ""
            try:
                result = await cleanup_dlq(db.pool, retention_days=RETENTION_DAYS)
                deleted, batches = result.deleted, result.batches
            except Exception as exc:  # a product failure: reported as a failed row, figures kept
                failure = f"; cleanup_dlq FAILED after {time.perf_counter() - started:.1f} s: {exc!r}"[:400]
            finally:
                elapsed = time.perf_counter() - started
                stop.set()
            samples = await during
    finally:
        await db.close()
        await redis.aclose()
    problem = failure or ("" if deleted == rows else f"; deleted {deleted:,} of {rows:,} rows: WRONG")
    return [
        Result(
            "cleanup while capturing",
            "max capture latency during cleanup",
            max(samples),
            "ms",
            baseline=max(baseline),
            target="< 100",
            note=(
                f"{len(samples):,} captures, p50 {percentile(samples, 50):.1f} / p95 "
                f"{percentile(samples, 95):.1f} ms; alone: p95 {percentile(baseline, 95):.1f} ms" + problem
            ),
        ),
        Result(
            "cleanup while capturing",
            f"cleanup_dlq of {rows:,} old resolved rows",
            deleted / elapsed,
            "rows/s",
            target="all deleted",
            passed=not problem,
            note=f"{deleted:,} rows in {elapsed:.1f} s, {batches} batches" + problem,
        ),
    ]

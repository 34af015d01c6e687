"""Readiness checks in the IETF health-check draft shape (``application/health+json``).

Postgres, Redis and worker heartbeats are checked concurrently, each bounded by
``HEALTH_CHECK_TIMEOUT_SECONDS``. A check that overruns is abandoned (not awaited), so a hung
dependency can never hang the probe. Postgres or Redis failing → ``fail`` (503); a queue with no
heartbeat → ``warn`` (200): the admin API must stay reachable exactly when workers are down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from msgspec import Struct

from service.state import AppState
from shared.infra.timefmt import now_iso_utc
from shared.jobs.heartbeat import HEARTBEAT_TTL_SECONDS, read_heartbeats
from shared.jobs.queues import ALL_QUEUES

HealthStatus = Literal["pass", "warn", "fail"]


class HealthCheck(Struct, omit_defaults=True, rename="camel"):
    """One check of the draft's ``checks`` map; fields left out when they do not apply."""

    status: HealthStatus
    component_id: str | None = None
    component_type: Literal["datastore", "worker"] | None = None
    observed_value: float | None = None
    observed_unit: str | None = None
    time: str | None = None
    output: str | None = None


class HealthReport(Struct, omit_defaults=True, rename="camel"):
    """``/health/live`` (status only) and ``/health/ready``."""

    status: HealthStatus
    release_id: str | None = None
    checks: dict[str, list[HealthCheck]] | None = None
    output: str | None = None


async def _bounded(work: Callable[[], Awaitable[Any]], timeout: float) -> tuple[Any, float]:
    """Run ``work`` with a hard deadline; returns (result, seconds). Raises TimeoutError."""
    started = time.perf_counter()
    task = asyncio.ensure_future(work())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()  # not awaited: a hung driver may ignore cancellation for a while
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise TimeoutError(f"no answer within {timeout:g}s")
    return task.result(), time.perf_counter() - started


async def _datastore_check(work: Callable[[], Awaitable[Any]], timeout: float) -> HealthCheck:
    try:
        _, elapsed = await _bounded(work, timeout)
        return HealthCheck(
            component_type="datastore",
            observed_value=round(elapsed, 4),
            observed_unit="s",
            status="pass",
            time=now_iso_utc(),
        )
    except Exception as exc:  # any failure is a failed check
        return HealthCheck(
            component_type="datastore",
            status="fail",
            output=f"{type(exc).__name__}: {exc}"[:200],
            time=now_iso_utc(),
        )


async def _postgres(state: AppState) -> None:
    pool = state.db.pool
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _workers_check(state: AppState, timeout: float) -> list[HealthCheck]:
    try:
        beats, _ = await _bounded(lambda: read_heartbeats(state.redis), timeout)
    except Exception as exc:
        return [
            HealthCheck(component_id=q, status="warn", output=f"heartbeats unreadable: {type(exc).__name__}")
            for q in ALL_QUEUES
        ]
    now = time.time()
    checks = []
    for queue in ALL_QUEUES:
        ages = [b.age_seconds(now) for b in beats if b.queue == queue]
        if not ages:
            checks.append(
                HealthCheck(component_id=queue, component_type="worker", status="warn", output="no heartbeat")
            )
            continue
        age = min(ages)
        checks.append(
            HealthCheck(
                component_id=queue,
                component_type="worker",
                observed_value=round(age, 3),
                observed_unit="s",
                status="pass" if age <= HEARTBEAT_TTL_SECONDS else "warn",
                time=now_iso_utc(),
            )
        )
    return checks


async def readiness(state: AppState) -> tuple[int, HealthReport]:
    timeout = state.settings.health_check_timeout_seconds
    postgres, redis, workers = await asyncio.gather(
        _datastore_check(lambda: _postgres(state), timeout),
        _datastore_check(lambda: state.redis.ping(), timeout),
        _workers_check(state, timeout),
    )
    checks = {
        "postgres:responseTime": [postgres],
        "redis:responseTime": [redis],
        "workers:heartbeat": workers,
    }
    statuses = [c.status for group in checks.values() for c in group]
    status: HealthStatus = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    report = HealthReport(status=status, release_id=state.settings.release_id, checks=checks)
    if state.draining:
        report.status = "fail"
        report.output = "draining: shutting down"
    return (503 if report.status == "fail" else 200), report

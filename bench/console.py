"""Console pages under a large DLQ: p95 server-side render time of every page, target < 50 ms.

``run_console_bench(database_url, redis_url, rows)`` tops the (migrated) database up to ``rows``
DLQ rows with ``INSERT ... SELECT generate_series`` (``bench.dlq_data.seed_dlq``: ~1,000
fingerprints, 10 % unresolved), adds audit rows (200,000 at 1M) and a three-entry retry chain, signs an
admin in (a real session row, cookie as the browser holds it) and renders each page ``samples``
times in-process through the ASGI app (``httpx.ASGITransport``: routing, middleware, session
lookup, queries, Jinja, no socket). Returns one record per page:
``{"case", "metric": "p95", "value", "unit": "ms", "target": 50, "pass", "note"}``.

The bench runner (``python -m bench``) calls it from a worker thread; called inside a running
event loop it returns an awaitable instead. Standalone::

    python -m bench.console --rows 100000 --queued-jobs 100000   # scratch backends as in bench.common
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet

from bench.common import bench_backends, percentile, progress
from bench.dlq_data import analyze, seed_dlq, seed_queued_jobs
from service.app import create_app
from service.console.security import SESSION_COOKIE
from shared.auth.sessions import create_session
from shared.auth.users import create_user
from shared.infra.config import Settings
from shared.infra.db import create_pool
from shared.infra.logs import configure_logging
from shared.infra.redis import create_redis

TARGET_MS = 50.0
DEFAULT_SAMPLES = 100
SERIES_BUDGET_SECONDS = 20.0
AUDIT_ROWS = 200_000
FINGERPRINTS = 1_000

SEED_AUDIT = """
INSERT INTO audit_log (occurred_at, actor, action, target_type, target_id, metadata, ip, request_id)
SELECT now() - make_interval(secs => ($1::int - g)),
       (ARRAY['oncall@example.test', 'lead@example.test', 'system:cron', 'system:worker'])[g % 4 + 1],
       (ARRAY['dlq.retry', 'dlq.resolve', 'auth.login', 'cron.cleanup_dlq', 'lead.refunded'])[g % 5 + 1],
       'dlq_entry', gen_random_uuid()::text, jsonb_build_object('job_id', 'job-' || g), '10.0.0.1',
       'bench-' || g
FROM generate_series(1, $1::int) AS g
"""
CHAIN = """
INSERT INTO dead_letter_queue (queue_name, job_id, function, args, kwargs, error_type, error_message,
    stack_trace, fingerprint, attempts, reason, failed_at, resolved_at, resolved_by, resolution,
    retry_job_id, retry_of)
VALUES ('email_send', $1, 'send_email', '[]', '{"to": "a@example.test", "template": "welcome_v2"}',
        'UnknownTemplate', 'unknown email template', 'Traceback ...', 'bench-chain', 1, 'permanent', now(),
        CASE WHEN $2 THEN now() END, CASE WHEN $2 THEN 'bench' END, CASE WHEN $2 THEN 'retried' END,
        CASE WHEN $2 THEN 'dlq-retry:' || $1 END, $3)
RETURNING id
"""
GROUP_SAMPLE = "SELECT queue_name, fingerprint FROM dlq_groups ORDER BY unresolved_count DESC LIMIT 1"


async def _top_up(database_url: str, rows: int) -> tuple[uuid.UUID, str, str]:
    """At least ``rows`` DLQ rows and ``AUDIT_ROWS`` audit rows; returns (middle of a chain, group)."""
    conn = await asyncpg.connect(database_url)
    try:
        have = await conn.fetchval("SELECT count(*) FROM dead_letter_queue")
        if have < rows:
            progress(f"console: seeding {rows - have:,} DLQ rows (have {have:,})")
            await seed_dlq(conn, rows - have, FINGERPRINTS, prefix=f"console-{uuid.uuid4().hex[:6]}-")
        audit_wanted = min(AUDIT_ROWS, max(1_000, rows // 5))
        audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
        if audit_rows < audit_wanted:
            await conn.execute(SEED_AUDIT, audit_wanted - audit_rows)
        first = await conn.fetchval(CHAIN, f"chain-{uuid.uuid4()}", True, None)
        middle = await conn.fetchval(CHAIN, f"chain-{uuid.uuid4()}", True, first)
        await conn.fetchval(CHAIN, f"chain-{uuid.uuid4()}", False, middle)
        await analyze(conn)
        await conn.execute("ANALYZE audit_log")
        group = await conn.fetchrow(GROUP_SAMPLE)
        return middle, group["queue_name"], group["fingerprint"]
    finally:
        await conn.close()


async def _admin_cookie(settings: Settings) -> str:
    pool = await create_pool(settings, application_name="bench-console-setup")
    try:
        async with pool.acquire() as conn:
            enrolment = await create_user(
                conn,
                settings,
                email=f"bench-{uuid.uuid4().hex[:8]}@example.test",
                role="admin",
                password="bench password 1234",
            )
            session = await create_session(
                conn, user_id=enrolment.user_id, ttl_seconds=3600, ip=None, user_agent="bench"
            )
        return session.token
    finally:
        await pool.close()


async def _series(fetch: Callable[[], Awaitable[httpx.Response]], samples: int) -> list[float]:
    for _ in range(3):  # warm-up: template compile, pool connections, plan cache
        await fetch()
    timings: list[float] = []
    deadline = time.monotonic() + SERIES_BUDGET_SECONDS
    while len(timings) < samples and (len(timings) < 10 or time.monotonic() < deadline):
        started = time.perf_counter()
        response = await fetch()
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(
                f"{response.request.url} answered {response.status_code}: {response.text[:300]}"
            )
    return timings


async def console_bench(
    database_url: str, redis_url: str, rows: int, *, samples: int = DEFAULT_SAMPLES
) -> list[dict[str, Any]]:
    chain_middle, group_queue, fingerprint = await _top_up(database_url, rows)
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        mfa_encryption_key=Fernet.generate_key().decode(),
        log_level="WARNING",
    )
    token = await _admin_cookie(settings)
    settings = dataclasses.replace(settings, db_pool_max_size=10)
    app = create_app(settings)
    records: list[dict[str, Any]] = []
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.ops.db.connected.wait(), timeout=30)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            client.cookies.set(SESSION_COOKIE, token)
            deep = "/console/dlq?state=all"
            for _ in range(20):  # 20 pages deep (1,000 entries in), by the "Older" link's cursor
                page = await client.get(deep)
                marker = 'rel="next" href="'
                start = page.text.index(marker) + len(marker)
                deep = page.text[start : page.text.index('"', start)].replace("&amp;", "&")
            pages = {
                "overview": "/console",
                "overview (live fragment)": "/console/live",
                "failure groups": "/console/groups",
                "failure groups (all states)": "/console/groups?state=all",
                "failure groups (page 5)": "/console/groups?state=all&page=5",
                "group confirmation": f"/console/groups/{group_queue}/{fingerprint}/retry",
                "DLQ list (unresolved)": "/console/dlq",
                "DLQ list (all, one queue)": "/console/dlq?state=all&queue=email_send",
                "DLQ list (fingerprint)": f"/console/dlq?state=all&fingerprint={fingerprint}",
                "DLQ list (search)": "/console/dlq?state=unresolved&q=refused",
                "DLQ list (21st page)": deep,
                "entry detail (lineage + history)": f"/console/dlq/{chain_middle}",
                "audit log": "/console/audit",
                "audit log (action filter)": "/console/audit?action=dlq.resolve",
                "cron runs": "/console/cron",
                "sign-in form": "/console/sign-in",
            }
            for name, path in pages.items():
                if name == "sign-in form":
                    client.cookies.clear()
                timings = await _series(lambda path=path: client.get(path), samples)  # type: ignore[misc]
                p95 = percentile(timings, 95)
                records.append(
                    {
                        "case": "console",
                        "metric": f"p95 {name}",
                        "value": round(p95, 2),
                        "unit": "ms",
                        "target": TARGET_MS,
                        "pass": p95 < TARGET_MS,
                        "note": f"{len(timings)} renders, p50 {percentile(timings, 50):.1f} ms, "
                        f"{rows:,} DLQ rows; GET {path[:60]}",
                    }
                )
                progress(f"console: {name}: p95 {p95:.1f} ms")
    return records


def run_console_bench(database_url: str, redis_url: str, rows: int) -> Any:
    """``list[dict]`` when called outside an event loop (the runner's worker thread); inside a
    running loop, the awaitable of it (``await run_console_bench(...)``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(console_bench(database_url, redis_url, rows))
    return console_bench(database_url, redis_url, rows)


def _table(records: list[dict[str, Any]]) -> str:
    lines = [f"{'page':<36} {'p95 ms':>8} {'target':>7}  result  note"]
    for r in records:
        verdict = "ok" if r["pass"] else "MISSED"
        lines.append(
            f"{r['metric'].removeprefix('p95 '):<36} {r['value']:>8.1f} {'< ' + str(int(r['target'])):>7}  "
            f"{verdict:<6}  {r['note']}"
        )
    return "\n".join(lines)


async def _standalone(rows: int, samples: int, queued_jobs: int) -> list[dict[str, Any]]:
    async with bench_backends() as backends:
        if queued_jobs:  # a backlog in Redis, as the bench runner seeds it before this case
            redis = create_redis(backends.redis_url)
            try:
                progress(f"console: seeding {queued_jobs:,} queued jobs")
                await seed_queued_jobs(redis, queued_jobs)
            finally:
                await redis.aclose()
        return await console_bench(backends.database_url, backends.redis_url, rows, samples=samples)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument(
        "--queued-jobs", type=int, default=1_000_000, help="Redis backlog (arq jobs) to seed first"
    )
    args = parser.parse_args()
    configure_logging("WARNING", "json")  # the page renders log as in production, minus access lines
    records = asyncio.run(_standalone(args.rows, args.samples, args.queued_jobs))
    print(_table(records))
    return 0 if all(r["pass"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())

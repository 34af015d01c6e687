"""Live jobs pages (``shared.controls.live``) with ``scale.queued_jobs`` jobs in one queue.

The queue (``email_send``) is filled to ``scale.queued_jobs`` due jobs, as arq stores them (zset
entry + ``arq:job:`` key), plus 1,000 scheduled and 1,000 retrying jobs (retrying index, try
counter, last error) and 20 running ones (in-progress flag + a heartbeat listing them). Then, each
``scale.latency_samples`` times in sequence: the first page of queued jobs, a deep page (a cursor
at a random rank of the million), the first scheduled and retrying pages, the running list and one
job's detail. Target: p95 < 50 ms each (issue 18), at the shared function the admin route and the
console page call (the routes add their own constant cost; see the API cases).

For scale, each note gives the ratio to the least any page can cost, ``ZRANGEBYSCORE … LIMIT 0
50`` plus one pipelined ``GET`` per job, timed in the same run (the target is absolute).

Then the same pages end to end, through a real ``fmhl-ops serve`` process (uvicorn), one
keep-alive ``httpx`` client, one request at a time after a warm-up: the admin API
(``GET /api/v1/admin/queues/email_send/jobs``: auth, decode, the Lua page, msgspec encode) and the
console page (``/console/queues/email_send/jobs``: session, the page, the template). Same target.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench.common import Backends, Result, Scale, latencies_ms, percentile, progress
from bench.http_cases import admin_client, admin_token, serve_args, server_process, service_env
from cli.embedded import free_port
from service.console.security import SESSION_COOKIE
from shared.controls.live import _Cursor, get_live_job, list_live_jobs
from shared.infra.redis import create_redis, job_last_error_key, retrying_index_key, serialize_job
from shared.jobs.heartbeat import Heartbeat, write_heartbeat
from shared.jobs.queues import EMAIL_SEND

QUEUE = EMAIL_SEND
PAGE = 50
TARGET_MS = 50.0
EXTRA = 1_000
RUNNING = 20
JOB_TTL_MS = 86_400_000
PREFIX = "bench-live-"


def _payload(i: int, now_ms: int) -> bytes:
    return serialize_job(
        {
            "t": None,
            "f": "send_email",
            "a": [],
            "k": {
                "to": f"provider-{i}@example.test",
                "template": "low_balance",
                "context": {"provider_name": f"Provider {i}", "balance": "3.00", "lead_price": "10.00"},
                "idempotency_key": f"bench-{i}",
                "_correlation_id": f"bench-corr-{i}",
            },
            "et": now_ms,
        }
    )


async def _seed(redis: Any, total: int, batch: int = 10_000) -> tuple[int, list[str]]:
    """Top ``QUEUE`` up to ``total`` due jobs; add the scheduled, retrying and running ones."""
    now_ms = int(time.time() * 1000)
    have = int(await redis.zcard(QUEUE))
    missing = max(0, total - have)
    for offset in range(0, missing, batch):
        pipe = redis.pipeline(transaction=False)
        ids = range(offset, min(missing, offset + batch))
        # due: spread over the last 10 minutes (a real backlog's scores are distinct-ish)
        pipe.zadd(QUEUE, {f"{PREFIX}{i}": now_ms - 600_000 + (i * 7) % 590_000 for i in ids})
        for i in ids:
            pipe.psetex(f"arq:job:{PREFIX}{i}", JOB_TTL_MS, _payload(i, now_ms))
        await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for i in range(EXTRA):
        scheduled, retrying = f"{PREFIX}sched-{i}", f"{PREFIX}retry-{i}"
        pipe.zadd(QUEUE, {scheduled: now_ms + 3_600_000 + i, retrying: now_ms + 120_000 + i})
        pipe.psetex(f"arq:job:{scheduled}", JOB_TTL_MS, _payload(i, now_ms))
        pipe.psetex(f"arq:job:{retrying}", JOB_TTL_MS, _payload(i, now_ms))
        pipe.set(f"arq:retry:{retrying}", 2, ex=86_400)
        pipe.zadd(retrying_index_key(QUEUE), {retrying: now_ms + 120_000 + i})
        error = {"try": 2, "max_tries": 6, "error_type": "EmailTemporaryFailure", "at": now_ms / 1000}
        error |= {"error_message": "451 4.3.0 Try again later", "next_attempt_ms": now_ms + 120_000 + i}
        pipe.set(job_last_error_key(retrying), orjson.dumps(error), ex=86_400)
    await pipe.execute()
    head = [m.decode() for m in await redis.zrange(QUEUE, 0, RUNNING - 1)]
    pipe = redis.pipeline(transaction=False)
    for job_id in head:
        pipe.set(f"arq:in-progress:{job_id}", b"1", px=600_000)
    await pipe.execute()
    running = tuple((job_id, time.time() - n) for n, job_id in enumerate(head))
    await write_heartbeat(
        redis, Heartbeat(QUEUE, "bench-worker", "bench", RUNNING, time.time(), running), 600
    )
    return missing, head


async def _cleanup(redis: Any, added: int, running: list[str]) -> None:
    keys = [f"{PREFIX}sched-{i}" for i in range(EXTRA)] + [f"{PREFIX}retry-{i}" for i in range(EXTRA)]
    keys += [f"{PREFIX}{i}" for i in range(added)]
    for offset in range(0, len(keys), 10_000):
        chunk = keys[offset : offset + 10_000]
        pipe = redis.pipeline(transaction=False)
        pipe.zrem(QUEUE, *chunk)
        pipe.unlink(*[f"arq:job:{k}" for k in chunk])
        await pipe.execute()
    await redis.unlink(retrying_index_key(QUEUE), *[f"arq:in-progress:{j}" for j in running])


async def live_jobs_case(backends: Backends, scale: Scale) -> list[Result]:
    redis = create_redis(backends.redis_url, timeout_seconds=30)
    results: list[Result] = []
    try:
        progress(f"live jobs: filling {QUEUE} to {scale.queued_jobs:,} queued jobs")
        started = time.perf_counter()
        added, running = await _seed(redis, scale.queued_jobs)
        depth = int(await redis.zcard(QUEUE))
        results.append(
            Result(
                "live jobs",
                f"seed {added:,} jobs into {QUEUE}",
                added / max(time.perf_counter() - started, 1e-9),
                "jobs/s",
                note=f"{QUEUE}: {depth:,} jobs ({EXTRA} scheduled, {EXTRA} retrying, {RUNNING} running)",
            )
        )
        rng = random.Random(18)
        all_due = int(await redis.zcount(QUEUE, "-inf", time.time() * 1000))

        async def deep_page() -> None:
            rank = rng.randrange(RUNNING, max(RUNNING + 1, all_due - PAGE))
            ((member, score),) = await redis.zrange(QUEUE, rank, rank, withscores=True)
            cursor = _Cursor(float(score), member.decode()).encode()
            page = await list_live_jobs(redis, queue=QUEUE, state="queued", cursor=cursor, limit=PAGE)
            assert len(page.items) == PAGE, len(page.items)

        async def page_of(state: str, expect: int) -> None:
            page = await list_live_jobs(redis, queue=QUEUE, state=state, limit=PAGE)
            assert len(page.items) == expect, (state, len(page.items))

        async def detail() -> None:
            await get_live_job(redis, queue=QUEUE, job_id=f"{PREFIX}retry-{rng.randrange(EXTRA)}")

        async def baseline() -> None:
            ids = await redis.zrangebyscore(QUEUE, "-inf", time.time() * 1000, start=0, num=PAGE)
            pipe = redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.get(b"arq:job:" + job_id)
            await pipe.execute()

        base = percentile(await latencies_ms(baseline, scale.latency_samples), 95)
        cases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("queued, first page (20 running at the head skipped)", lambda: page_of("queued", PAGE)),
            ("queued, page at a random depth (cursor)", deep_page),
            ("scheduled, first page", lambda: page_of("scheduled", PAGE)),
            ("retrying, first page", lambda: page_of("retrying", PAGE)),
            ("running, all", lambda: page_of("running", RUNNING)),
            ("job detail", detail),
        ]
        for name, action in cases:
            samples = await latencies_ms(action, scale.latency_samples)
            p95 = percentile(samples, 95)
            results.append(
                Result(
                    "live jobs",
                    f"{name}, p95 at {depth:,} jobs",
                    p95,
                    "ms",
                    target=f"< {TARGET_MS:g}",
                    passed=p95 < TARGET_MS,
                    note=f"n={len(samples)}, p50 {percentile(samples, 50):.2f} ms; {p95 / base:.1f}x the "
                    f"floor (ZRANGEBYSCORE LIMIT {PAGE} + {PAGE} pipelined GETs, p95 {base:.2f} ms)",
                )
            )
        results += await _through_http(backends, scale, depth, running, rng)
        await _cleanup(redis, added, running)
    finally:
        await redis.aclose()
    return results


async def _through_http(
    backends: Backends, scale: Scale, depth: int, running: list[str], rng: random.Random
) -> list[Result]:
    """The live-jobs API route and console page through a real ``fmhl-ops serve``."""
    api = f"/api/v1/admin/queues/{QUEUE}/jobs"
    page_url = f"/console/queues/{QUEUE}/jobs"
    port = free_port()
    token = await admin_token(backends.database_url)
    results: list[Result] = []
    with server_process(serve_args(port), service_env(backends), port):
        async with admin_client(port, token) as client:
            client.cookies.set(SESSION_COOKIE, token)
            deep_cursor = None
            for _ in range(rng.randrange(20, 40)):  # a cursor some pages in, as "Next" makes them
                response = await client.get(
                    api, params={"limit": PAGE, **({"cursor": deep_cursor} if deep_cursor else {})}
                )
                deep_cursor = response.json()["next_cursor"]
            detail_id = f"{PREFIX}retry-{rng.randrange(EXTRA)}"
            deep = {"state": "queued", "cursor": deep_cursor or ""}
            cases: dict[str, tuple[str, dict[str, str]]] = {
                "API: queued, first page": (api, {"state": "queued"}),
                "API: queued, page by cursor (20-40 pages in)": (api, deep),
                "API: scheduled, first page": (api, {"state": "scheduled"}),
                "API: retrying, first page": (api, {"state": "retrying"}),
                "API: running, all": (api, {"state": "running"}),
                "API: job detail": (f"{api}/{detail_id}", {}),
                "console: queued, first page": (page_url, {"state": "queued"}),
                "console: queued, page by cursor": (page_url, deep),
                "console: retrying, first page": (page_url, {"state": "retrying"}),
                "console: job detail": (f"{page_url}/{detail_id}", {}),
            }  # fmt: skip
            for name, (url, params) in cases.items():
                progress(f"live jobs over HTTP: {name}")

                async def fetch(url: str = url, params: dict[str, str] = params) -> None:
                    response = await client.get(url, params=params)
                    if response.status_code != 200:
                        raise RuntimeError(
                            f"GET {url} {params} -> {response.status_code}: {response.text[:200]}"
                        )

                for _ in range(3):
                    await fetch()
                samples = await latencies_ms(fetch, scale.latency_samples)
                p95 = percentile(samples, 95)
                results.append(
                    Result(
                        "live jobs (HTTP)",
                        f"{name}, p95 at {depth:,} jobs",
                        p95,
                        "ms",
                        target=f"< {TARGET_MS:g}",
                        passed=p95 < TARGET_MS,
                        note=f"n={len(samples)}, p50 {percentile(samples, 50):.2f} ms; fmhl-ops serve, one "
                        f"keep-alive client, {len(running)} running",
                    )
                )
    return results

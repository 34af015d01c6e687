"""The overview under a Redis backlog: heartbeats come from their index, never from a keyspace
scan, so 200,000 queued-job keys cost the overview nothing (a SCAN took seconds at 1M)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.redis import HEARTBEAT_INDEX_KEY
from shared.jobs.heartbeat import Heartbeat, delete_heartbeat, read_heartbeats, write_heartbeat
from shared.jobs.stats import collect_queue_stats

BACKLOG_KEYS = 200_000


@pytest.mark.serial  # asserts reads under 100 ms and 500 ms
async def test_heartbeats_and_queue_stats_stay_fast_with_a_large_keyspace(
    settings: Settings, pool: Any, redis: Any
) -> None:
    for start in range(0, BACKLOG_KEYS, 20_000):
        await redis.mset({f"arq:job:backlog-{i}": b"x" for i in range(start, start + 20_000)})
    await write_heartbeat(redis, Heartbeat("email_send", "w-live", "host", 2, time.time()))
    await write_heartbeat(redis, Heartbeat("report_export", "w-gone", "host", 0, time.time()), ttl_seconds=1)
    await write_heartbeat(redis, Heartbeat("distribute_lead", "w-stopped", "host", 0, time.time()))
    await delete_heartbeat(redis, "distribute_lead", "w-stopped")
    await asyncio.sleep(1.1)  # w-gone's key and index entry expire

    started = time.perf_counter()
    beats = await read_heartbeats(redis)
    read_ms = (time.perf_counter() - started) * 1000
    assert [(b.queue, b.worker_id, b.ongoing_jobs) for b in beats] == [("email_send", "w-live", 2)]
    assert await redis.zrange(HEARTBEAT_INDEX_KEY, 0, -1) == [b"fmhl:heartbeat:email_send:w-live"]

    db = Database.from_pool(settings, pool)
    started = time.perf_counter()
    stats = await collect_queue_stats(db, redis)
    stats_ms = (time.perf_counter() - started) * 1000
    print(f"{BACKLOG_KEYS:,} keys: read_heartbeats {read_ms:.1f} ms, collect_queue_stats {stats_ms:.1f} ms")
    assert {s.name: s.active for s in stats}["email_send"] == 2
    assert read_ms < 100 and stats_ms < 500

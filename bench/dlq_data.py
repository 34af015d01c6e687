"""Bench data, loaded set-based: DLQ rows by ``INSERT ... SELECT generate_series``, queued jobs by
pipelined ``ZADD`` batches.

DLQ rows go through plain INSERTs into ``dead_letter_queue`` (never ``COPY`` into a side table),
so every trigger and counter the product maintains (``dlq_groups``, sql/002) sees them exactly as
it sees captures. One statement per million rows keeps each statement's transition table bounded.

Shape of the seeded DLQ (``seed_dlq``): ``fingerprints`` distinct failures (~1,000 at 1M rows),
each on one of the three job queues with its function and error type; 10 % of rows unresolved
(every tenth, spread over every fingerprint), the rest resolved manually an hour after failing;
``failed_at`` spread over the last 30 days; realistic payload, message and stack-trace sizes.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from bench.common import progress
from shared.infra.redis import serialize_job
from shared.jobs.queues import JOB_QUEUES

SEED_CHUNK = 1_000_000
SEARCH_WORD = "refused"
JOB_TTL_MS = 86_400_000

FUNCTIONS = {
    "distribute_lead": "distribute_lead",
    "email_send": "send_email",
    "report_export": "export_report",
}

# $1 first g, $2 last g, $3 fingerprints, $4 job id prefix, $5 oldest age (s), $6 extra age (s),
# $7 every n-th row unresolved (0: all resolved). Row g belongs to failure f = (g / 7) % $3, so
# consecutive rows hit different failures and the unresolved tenth covers every failure.
INSERT_DLQ_ROWS = """
INSERT INTO dead_letter_queue (
    queue_name, job_id, function, args, kwargs, error_type, error_message, stack_trace, fingerprint,
    attempts, reason, enqueued_at, failed_at, correlation_id, resolved_at, resolved_by, resolution)
SELECT (ARRAY['distribute_lead', 'email_send', 'report_export'])[f % 3 + 1],
       $4 || g,
       (ARRAY['distribute_lead', 'send_email', 'export_report'])[f % 3 + 1],
       jsonb_build_array(g),
       jsonb_build_object('to', 'user' || g || '@example.test', 'template', 'lead_assigned'),
       (ARRAY['ValueError', 'SMTPServerDisconnected', 'TimeoutError', 'KeyError', 'NotFound'])[f % 5 + 1],
       CASE WHEN f % 4 = 0 THEN 'connection refused by mx' || f || '.example.test after ' || g % 90 || ' s'
            ELSE 'failure number ' || f || ' while handling item ' || g END,
       'Traceback (most recent call last):' || repeat(E'\n  File "worker/jobs.py", line 42, in run', 8)
           || E'\nbench.Failure' || f,
       'bench' || lpad(f::text, 11, '0'),
       1 + g % 5,
       CASE WHEN f % 2 = 0 THEN 'permanent' ELSE 'exhausted' END,
       t.failed_at - interval '2 seconds',
       t.failed_at,
       'bench-' || g,
       CASE WHEN $7::int > 0 AND g % $7::int = 0 THEN NULL
            ELSE least(now(), t.failed_at + interval '1 hour') END,
       CASE WHEN $7::int > 0 AND g % $7::int = 0 THEN NULL ELSE 'bench' END,
       CASE WHEN $7::int > 0 AND g % $7::int = 0 THEN NULL ELSE 'manual' END
FROM generate_series($1::bigint, $2::bigint) AS g,
     LATERAL (SELECT (g / 7) % $3::int AS f) AS fp,
     LATERAL (SELECT now() - make_interval(secs => $6::int + (g * 7919) % $5::int) AS failed_at) AS t
"""


async def seed_dlq(
    conn: asyncpg.Connection,
    rows: int,
    fingerprints: int,
    *,
    prefix: str = "seed-",
    spread_seconds: int = 30 * 86_400,
    older_than_seconds: int = 0,
    unresolved_every: int = 10,
) -> float:
    """Insert ``rows`` DLQ rows (see the module docstring); returns the seconds it took."""
    started = time.perf_counter()
    for first in range(1, rows + 1, SEED_CHUNK):
        last = min(rows, first + SEED_CHUNK - 1)
        await conn.execute(
            INSERT_DLQ_ROWS,
            first,
            last,
            fingerprints,
            prefix,
            spread_seconds,
            older_than_seconds,
            unresolved_every,
        )
        if rows > SEED_CHUNK:
            progress(f"  seeded {last:,}/{rows:,} DLQ rows ({prefix})")
    return time.perf_counter() - started


async def analyze(conn: asyncpg.Connection) -> None:
    await conn.execute("VACUUM ANALYZE dead_letter_queue, dlq_groups")


async def seed_queued_jobs(redis: Any, total: int, *, batch: int = 10_000) -> float:
    """``total`` queued jobs spread over the three job queues, as arq stores them: a zset entry and
    an ``arq:job:{id}`` key (orjson payload, TTL) each, so the keyspace is as large as production's
    with that backlog. One pipeline of ``ZADD`` and ``PSETEX`` batches; returns the seconds it took."""
    started = time.perf_counter()
    now_ms = int(time.time() * 1000)
    for offset in range(0, total, batch * 10):
        pipe = redis.pipeline(transaction=False)
        for chunk in range(offset, min(total, offset + batch * 10), batch):
            queue = JOB_QUEUES[(chunk // batch) % len(JOB_QUEUES)]
            ids = range(chunk, min(total, chunk + batch))
            # a minute of backlog and a minute of deferred jobs
            pipe.zadd(queue, {f"bench-queued-{i}": now_ms - 60_000 + i % 120_000 for i in ids})
            function = FUNCTIONS[queue]
            for i in ids:
                payload = serialize_job({"t": None, "f": function, "a": [i], "k": {}, "et": now_ms})
                pipe.psetex(f"arq:job:bench-queued-{i}", JOB_TTL_MS, payload)
        await pipe.execute()
    return time.perf_counter() - started

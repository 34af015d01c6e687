"""Load (issue 10, part 4): 50 concurrent clients for 60 s against a real ``fmhl-ops serve``.

The mix: ``/health/ready`` (probes), ``/metrics`` (scrapes), ``GET /api/v1/admin/queues`` and DLQ
list pages (first pages with assorted filters, and walks of up to five pages along
``next_cursor``) over 100,000 DLQ rows seeded with one ``INSERT ... SELECT generate_series``.
After a 5 s warm-up the run must show zero errors (any non-200 or transport error counts); it
prints per-endpoint p50/p99 and the service's RSS (``VmRSS`` from ``/proc/<pid>/status`` once a
second), and the mean RSS of the last 10 s must be within 20 % of the first 10 s.

The clients run in this test's event loop (httpx, one connection each); on a shared two-core
machine the percentiles include client-side queueing, so only errors and RSS are asserted.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from cli.embedded import free_port
from shared.infra.config import Settings
from tests.factories import create_admin, create_admin_session
from tests.procs import Proc, base_env, wait_http
from tests.reliability.support import percentile

# serial: fifty clients for a minute with latency percentiles: needs both cores
pytestmark = pytest.mark.serial

CLIENTS = 50
DURATION_SECONDS = 60.0
WARMUP_SECONDS = 5.0
DLQ_ROWS = 100_000
WINDOW_SECONDS = 10
QUEUES = ("distribute_lead", "email_send", "report_export")

SEED = """
INSERT INTO dead_letter_queue (
    queue_name, job_id, function, args, kwargs, error_type, error_message, stack_trace, fingerprint,
    attempts, reason, failed_at, resolved_at, resolved_by, resolution)
SELECT (ARRAY['distribute_lead', 'email_send', 'report_export'])[1 + g % 3],
       'load-' || g,
       (ARRAY['distribute_lead', 'send_email', 'export_report'])[1 + g % 3],
       jsonb_build_array(g, 'lead-' || g),
       jsonb_build_object('attempt', g % 5),
       (ARRAY['ValueError', 'TimeoutError', 'SMTPServerDisconnected', 'KeyError'])[1 + g % 4],
       'failure number ' || g || ' while talking to upstream ' || (g % 17),
       'Traceback (most recent call last):' || repeat(E'\\n  File "worker/jobs.py", line 1, in run', 5),
       'fp-load-' || (g % 40),
       1 + g % 5,
       (ARRAY['exhausted', 'permanent'])[1 + g % 2],
       now() - make_interval(secs => g * 8),
       CASE WHEN g % 4 = 0 THEN now() - make_interval(secs => g * 4) END,
       CASE WHEN g % 4 = 0 THEN 'load' END,
       CASE WHEN g % 4 = 0 THEN 'manual' END
FROM generate_series(1, $1::int) AS g
"""


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Load:
    def __init__(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.measuring = False

    async def _get(self, name: str, url: str, params: dict[str, Any] | None = None) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            response = await self.client.get(url, params=params)
        except httpx.HTTPError as exc:
            if self.measuring:
                self.errors[f"{name}: {type(exc).__name__}"] += 1
            return None
        if self.measuring:
            self.latencies[name].append(time.perf_counter() - started)
            if response.status_code != 200:
                self.errors[f"{name}: {response.status_code} {response.text[:120]}"] += 1
        return response

    async def one(self) -> None:
        pick = self.rng.random()
        if pick < 0.2:
            await self._get("ready", "/health/ready")
        elif pick < 0.3:
            await self._get("metrics", "/metrics")
        elif pick < 0.5:
            await self._get("queues", "/api/v1/admin/queues")
        elif pick < 0.8:
            params: dict[str, Any] = {"limit": self.rng.choice([20, 50, 100])}
            if self.rng.random() < 0.5:
                params["queue"] = self.rng.choice(QUEUES)
            if self.rng.random() < 0.3:
                params["resolved"] = self.rng.choice(["true", "false"])
            if self.rng.random() < 0.2:
                params["fingerprint"] = f"fp-load-{self.rng.randrange(40)}"
            await self._get("dlq_page", "/api/v1/admin/queues/dlq", params)
        else:
            params = {"limit": 50, "resolved": "false"}
            for _ in range(5):
                response = await self._get("dlq_walk", "/api/v1/admin/queues/dlq", params)
                if response is None or response.status_code != 200 or not response.json()["next_cursor"]:
                    break
                params = {**params, "cursor": response.json()["next_cursor"]}

    async def run_until(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await self.one()


@pytest.mark.timeout(240)
async def test_fifty_clients_for_a_minute_over_100k_dlq_rows(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    key = Fernet.generate_key().decode()
    admin = await create_admin(clean_db, mfa_encryption_key=key)
    token = await create_admin_session(clean_db, admin.user_id)
    seeded_at = time.perf_counter()
    status = await clean_db.execute(SEED, DLQ_ROWS)
    await clean_db.execute("ANALYZE dead_letter_queue")
    assert status == f"INSERT 0 {DLQ_ROWS}"
    seed_seconds = time.perf_counter() - seeded_at
    port = free_port()
    assert settings.database_url and settings.redis_url
    proc = Proc(
        ["serve", "--host", "127.0.0.1", "--port", str(port)],
        base_env(
            DATABASE_URL=settings.database_url,
            REDIS_URL=settings.redis_url,
            MFA_ENCRYPTION_KEY=key,
            LOG_LEVEL="WARNING",
        ),
    ).start()
    rss: list[tuple[float, int]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health/ready", timeout=30, proc=proc)
        clients = [
            httpx.AsyncClient(
                base_url=base,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
                limits=httpx.Limits(max_connections=1),
            )
            for _ in range(CLIENTS)
        ]
        loads = [Load(client, random.Random(index)) for index, client in enumerate(clients)]
        try:
            warm_until = time.monotonic() + WARMUP_SECONDS
            await asyncio.gather(*(load.run_until(warm_until) for load in loads))
            for load in loads:
                load.measuring = True
            started = time.monotonic()
            deadline = started + DURATION_SECONDS

            async def sample_rss() -> None:
                while time.monotonic() < deadline:
                    rss.append((time.monotonic() - started, _rss_kib(proc.pid)))
                    await asyncio.sleep(1.0)

            await asyncio.gather(sample_rss(), *(load.run_until(deadline) for load in loads))
            elapsed = time.monotonic() - started
        finally:
            for client in clients:
                await client.aclose()
    finally:
        exit_code = proc.stop()
    assert exit_code == 0, proc.output()[-3000:]

    latencies: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    for load in loads:
        errors.update(load.errors)
        for name, values in load.latencies.items():
            latencies[name].extend(values)
    every = [value for values in latencies.values() for value in values]
    first = [kib for at, kib in rss if at < WINDOW_SECONDS]
    last = [kib for at, kib in rss if at >= DURATION_SECONDS - WINDOW_SECONDS]
    growth = statistics.mean(last) / statistics.mean(first) - 1
    print(
        f"\nload: {CLIENTS} clients, {elapsed:.0f}s after {WARMUP_SECONDS:.0f}s warm-up, {DLQ_ROWS} DLQ rows "
        f"(seeded in {seed_seconds:.1f}s): {len(every)} requests ({len(every) / elapsed:.0f}/s), "
        f"{sum(errors.values())} errors"
    )
    for name, values in sorted(latencies.items()):
        print(
            f"  {name:9s} n={len(values):6d} p50={percentile(values, 50) * 1000:7.1f} ms "
            f"p99={percentile(values, 99) * 1000:7.1f} ms max={max(values) * 1000:7.1f} ms"
        )
    print(f"  all       p99={percentile(every, 99) * 1000:.1f} ms")
    print(
        f"  service RSS: first {WINDOW_SECONDS}s mean {statistics.mean(first) / 1024:.1f} MiB, last "
        f"{WINDOW_SECONDS}s mean {statistics.mean(last) / 1024:.1f} MiB ({growth:+.1%}); "
        f"max {max(kib for _, kib in rss) / 1024:.1f} MiB over {len(rss)} samples"
    )
    assert not errors, errors.most_common(5)
    assert len(latencies) == 5 and all(len(v) >= 20 for v in latencies.values())
    assert growth < 0.20

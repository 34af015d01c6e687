"""HTTP cases through a real ``fmhl-ops serve`` process (uvicorn), measured by a client.

* ``/health/live``: ``wrk -t1 -c50`` against ``fmhl-ops serve`` and against a bare Starlette app
  with the same body under uvicorn's CLI (``bench.bare_app``), both subprocesses, alternating.
* Admin API latencies (DLQ list, deep page, filters, search, groups, queue monitor, retry): one
  keep-alive ``httpx`` client, requests one at a time, after a warm-up; p50 and p95 in ms. The
  bearer token is a session row written directly (login itself is not what is measured).
* Service RSS from ``/proc/<pid>/status`` after all of the above.
* ``/metrics`` render with every label set populated: in process (the registry must be filled
  from outside), through the app's real route and middleware with ``httpx.ASGITransport``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet

from bench.common import Backends, Result, Scale, alternate, latencies_ms, percentile, progress, rss_mb, timed
from bench.dlq_data import SEARCH_WORD
from cli.embedded import free_port
from shared.auth.sessions import create_session

FMHL_OPS = str(Path(sys.executable).parent / "fmhl-ops")
REPO_ROOT = Path(__file__).resolve().parent.parent
DLQ = "/api/v1/admin/queues/dlq"
WRK_CONNECTIONS = 50


def service_env(backends: Backends) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        DATABASE_URL=backends.database_url,
        REDIS_URL=backends.redis_url,
        MFA_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


@contextlib.contextmanager
def server_process(args: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess (own session, output discarded), ready on ``port``; stopped by PID."""
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{args[:3]} exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[:3]} did not answer on port {port}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve_args(port: int) -> list[str]:
    return [FMHL_OPS, "serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0"]


def bare_args(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log", "--no-server-header",
    ]  # fmt: skip


async def wrk(port: int, seconds: float) -> float:
    """Requests per second of ``wrk -t1 -c50`` on ``/health/live`` (non-2xx responses are an error)."""
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{max(1, round(seconds))}s",
        f"http://127.0.0.1:{port}/health/live",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    text = out.decode()
    found = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if proc.returncode != 0 or found is None or "Non-2xx" in text:
        raise RuntimeError(f"wrk failed:\n{text}")
    return float(found.group(1))


async def live_case(backends: Backends, scale: Scale) -> list[Result]:
    progress(
        f"/health/live: wrk -t1 -c{WRK_CONNECTIONS} -d{scale.wrk_seconds:.0f}s, "
        "fmhl-ops serve vs bare Starlette"
    )
    env = service_env(backends)
    ours_port, bare_port = free_port(), free_port()
    with (
        server_process(serve_args(ours_port), env, ours_port),
        server_process(bare_args(bare_port), env, bare_port),
    ):
        if scale.name != "toy":  # toy (make test) checks the case runs: its figures mean nothing
            await wrk(ours_port, 1)  # warm-up
            await wrk(bare_port, 1)
        rounds = await alternate(
            lambda: wrk(ours_port, scale.wrk_seconds),
            lambda: wrk(bare_port, scale.wrk_seconds),
            scale.rounds,
            label="/health/live",
        )
    return [
        Result(
            "/health/live",
            f"wrk -t1 -c{WRK_CONNECTIONS}, uvicorn",
            rounds.ours_median,
            "req/s",
            baseline=rounds.baseline_median,
            ratio=rounds.ratio,
            target=">= 0.85",
            note=rounds.describe(),
        )
    ]


# -- admin API latencies -------------------------------------------------------------------------
async def admin_token(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        user_id = await conn.fetchval(
            """INSERT INTO users (email, password_hash, role, totp_secret_encrypted)
               VALUES ($1, 'bench: no password', 'admin', 'bench: no secret') RETURNING id""",
            f"bench-{uuid.uuid4().hex[:8]}@example.test",
        )
        session = await create_session(conn, user_id=user_id, ttl_seconds=86_400, ip=None, user_agent=None)
        return session.token
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def admin_client(port: int, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as client:
        yield client


def latency_result(case: str, samples: list[float], target_p95_ms: float | None, note: str = "") -> Result:
    p50, p95 = percentile(samples, 50), percentile(samples, 95)
    detail = f"p50 {p50:.1f} ms, max {max(samples):.1f} ms, n={len(samples)}"
    return Result(
        case,
        "p95 latency",
        p95,
        "ms",
        target=f"< {target_p95_ms:g}" if target_p95_ms is not None else None,
        note=f"{detail}; {note}" if note else detail,
    )


def failed_result(case: str, target_p95_ms: float | None, exc: BaseException) -> Result:
    return Result(
        case,
        "p95 latency",
        float("nan"),
        "ms",
        target=f"< {target_p95_ms:g}" if target_p95_ms is not None else None,
        passed=False,
        note=f"FAILED: {exc}"[:400],
    )


async def _get_ok(client: httpx.AsyncClient, url: str, params: dict[str, str] | None = None) -> Any:
    response = await client.get(url, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} {params} -> {response.status_code}: {response.text[:300]}")
    return response.json()


async def _series(
    client: httpx.AsyncClient, url: str, samples: int, params: dict[str, str] | None = None
) -> list[float]:
    for _ in range(3):
        await _get_ok(client, url, params)
    return await latencies_ms(lambda: _get_ok(client, url, params), samples)


async def _deep_cursor(client: httpx.AsyncClient, pages: int) -> str:
    cursor: str | None = None
    for _ in range(pages):
        body = await _get_ok(client, DLQ, {"cursor": cursor} if cursor else None)
        cursor = body["next_cursor"]
        if cursor is None:
            raise RuntimeError(f"the DLQ has fewer than {pages} pages")
    assert cursor is not None
    return cursor


async def _unresolved_ids(database_url: str, count: int) -> tuple[list[str], str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT id::text FROM dead_letter_queue
               WHERE resolved_at IS NULL AND queue_name = 'email_send' AND job_id LIKE 'seed-%'
               ORDER BY failed_at DESC LIMIT $1""",
            count,
        )
        fingerprint = await conn.fetchval(
            "SELECT fingerprint FROM dlq_groups ORDER BY unresolved_count DESC LIMIT 1"
        )
    finally:
        await conn.close()
    return [row["id"] for row in rows], str(fingerprint)


async def api_cases(backends: Backends, scale: Scale, rows_label: str) -> list[Result]:
    """Every admin-API latency case and the service's RSS after them."""
    env = service_env(backends)
    port = free_port()
    token = await admin_token(backends.database_url)
    retry_ids, fingerprint = await _unresolved_ids(backends.database_url, scale.retry_samples + 3)
    n = scale.latency_samples
    results: list[Result] = []
    with server_process(serve_args(port), env, port) as proc:
        async with admin_client(port, token) as client:

            async def measure(case: str, target: float | None, url: str, params: dict[str, str] | None = None,
                              samples: int = n, note: str = "") -> None:  # fmt: skip
                progress(f"{case} (up to {samples} requests)")
                try:
                    series = await _series(client, url, samples, params)
                except (RuntimeError, httpx.HTTPError) as exc:  # a product failure: a failed row
                    results.append(failed_result(case, target, exc))
                    return
                results.append(latency_result(case, series, target, note))

            await measure("DLQ list, first page", 10, DLQ, note=rows_label)
            progress(f"walking {scale.deep_pages:,} DLQ pages for a deep cursor")
            cursor = await _deep_cursor(client, scale.deep_pages)
            await measure(f"DLQ list, {scale.deep_pages:,} pages deep", 10, DLQ, {"cursor": cursor})
            await measure(
                "DLQ filter queue + unresolved", 10, DLQ, {"queue": "email_send", "resolved": "false"}
            )
            await measure("DLQ filter fingerprint", 10, DLQ, {"fingerprint": fingerprint})
            await measure("DLQ search q", 10, DLQ, {"q": SEARCH_WORD})
            await measure("GET …/dlq/groups", 50, f"{DLQ}/groups", note=rows_label)
            await measure("GET …/dlq/groups?queue=", 50, f"{DLQ}/groups", {"queue": "email_send"})
            await measure("GET /api/v1/admin/queues", 20, "/api/v1/admin/queues",
                          note=f"{rows_label} + {scale.queued_jobs:,} queued jobs")  # fmt: skip
            try:
                results.append(await _retry_case(client, retry_ids))
            except (RuntimeError, httpx.HTTPError) as exc:
                results.append(failed_result("POST …/dlq/{id}/retry", 10, exc))
        rss = rss_mb(proc.pid)
    results.append(Result("service RSS", "after the API cases", rss, "MB", target="< 150"))
    return results


async def _retry_case(client: httpx.AsyncClient, ids: list[str]) -> Result:
    progress(f"POST …/dlq/{{id}}/retry ({len(ids) - 3} entries)")

    def retry(entry_id: str) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            response = await client.post(f"{DLQ}/{entry_id}/retry")
            if response.status_code != 202:
                raise RuntimeError(f"retry {entry_id} -> {response.status_code}: {response.text[:300]}")

        return call

    for entry_id in ids[:3]:
        await retry(entry_id)()
    samples = [1000 * await timed(retry(entry_id)) for entry_id in ids[3:]]
    return latency_result("POST …/dlq/{id}/retry", samples, 10, "each on a distinct unresolved entry")

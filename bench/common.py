"""What every bench case shares: scale, backends, the result record, timing and A/B alternation.

Backends, in this order: ``BENCH_DATABASE_URL`` / ``BENCH_REDIS_URL``, else ``TEST_DATABASE_URL``
/ ``TEST_REDIS_URL``, else embedded servers (``cli.embedded``) in a temporary directory, destroyed
at the end. On the Postgres server a scratch database ``fmhl_bench_<random>`` is created (its user
needs CREATEDB) and dropped at the end. Redis: the bench uses one db number of its own
(``BENCH_REDIS_DB``, default 13, unless ``BENCH_REDIS_URL`` names one) and flushes only that db.

Ratios are always "ours / baseline" of a figure where higher is better (throughput), measured in
alternating rounds (A B, B A, A B, ...) after a warm-up of each side, so drift in a shared
machine's load hits both sides alike; the reported ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.infra.migrations import migrate

DEFAULT_BENCH_REDIS_DB = 13


@dataclass(frozen=True, slots=True)
class Scale:
    """Sizes of one bench run. ``toy`` keeps every case alive inside ``make test``."""

    name: str
    dlq_rows: int
    fingerprints: int
    queued_jobs: int
    overhead_jobs: int
    storm_jobs: int
    scale_out_jobs: int
    cleanup_rows: int
    reconcile_providers: int
    rounds: int
    latency_samples: int
    deep_pages: int
    wrk_seconds: float
    retry_samples: int


SCALES: dict[str, Scale] = {
    "toy": Scale(
        name="toy",
        dlq_rows=3_000,
        fingerprints=50,
        queued_jobs=3_000,
        overhead_jobs=300,
        storm_jobs=150,
        scale_out_jobs=300,
        cleanup_rows=2_000,
        reconcile_providers=500,
        rounds=1,
        latency_samples=10,
        deep_pages=5,
        wrk_seconds=1.0,
        retry_samples=5,
    ),
    "1m": Scale(
        name="1m",
        dlq_rows=1_000_000,
        fingerprints=1_000,
        queued_jobs=1_000_000,
        overhead_jobs=5_000,
        storm_jobs=3_000,
        scale_out_jobs=6_000,
        cleanup_rows=1_000_000,
        reconcile_providers=100_000,
        rounds=3,
        latency_samples=200,
        deep_pages=1_000,
        wrk_seconds=5.0,
        retry_samples=100,
    ),
}
SCALES["10m"] = Scale(**{**asdict(SCALES["1m"]), "name": "10m", "dlq_rows": 10_000_000})


def scale_from_env() -> Scale:
    raw = (os.environ.get("BENCH_SCALE") or "1m").strip().lower()
    if raw not in SCALES:
        raise SystemExit(f"BENCH_SCALE={raw!r} is invalid: expected one of {', '.join(SCALES)}")
    return SCALES[raw]


# -- results ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class Result:
    """One line of the table and of ``bench/results.json``.

    ``target`` is a comparison against ``value`` (``ratio`` when a baseline exists): ``">= 0.9"``,
    ``"< 50"``; ``None`` for an informational figure (``passed`` is then ``None`` too).
    """

    case: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str | None = None
    passed: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.target is not None and self.passed is None:
            subject = self.ratio if self.ratio is not None else self.value
            self.passed = meets(subject, self.target)

    def as_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "metric": self.metric,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": _round(self.baseline),
            "ratio": _round(self.ratio),
            "target": self.target,
            "pass": self.passed,
            "note": self.note,
        }


def _round(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return round(value, 4 if abs(value) < 10 else 1)


def meets(value: float, target: str) -> bool:
    op, _, raw = target.partition(" ")
    bound = float(raw)
    checks: dict[str, Callable[[float, float], bool]] = {
        ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
    }
    if op not in checks:
        raise ValueError(f"bad target {target!r}")
    return checks[op](value, bound)


# Progress and the table go to the stdout the bench started with; log lines (JSON on stdout, as
# in production) are rendered but sent to /dev/null while a case runs (``quiet_stdout``).
CONSOLE = sys.stdout


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=CONSOLE, flush=True)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Log lines are still rendered (their cost is real) but written to /dev/null."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


# -- timing ----------------------------------------------------------------------------------------
def percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty sample."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


async def timed(action: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


SERIES_BUDGET_SECONDS = 30.0
MIN_SAMPLES = 10


async def latencies_ms(
    action: Callable[[], Awaitable[Any]], samples: int, budget_s: float = SERIES_BUDGET_SECONDS
) -> list[float]:
    """Up to ``samples`` sequential timings in ms; stops early (after at least ``MIN_SAMPLES``)
    once ``budget_s`` is spent, so a slow endpoint cannot stretch the run (n is reported)."""
    found: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(found) < samples and (len(found) < MIN_SAMPLES or time.perf_counter() < deadline):
        found.append(1000 * await timed(action))
    return found


@dataclass(slots=True)
class ABRounds:
    """Throughputs of side A (ours) and B (baseline) per alternating round."""

    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        return statistics.median(o / b for o, b in zip(self.ours, self.baseline, strict=True))

    def describe(self) -> str:
        ours = ", ".join(f"{v:,.0f}" for v in self.ours)
        base = ", ".join(f"{v:,.0f}" for v in self.baseline)
        return f"rounds ours [{ours}] vs baseline [{base}]"


async def alternate(
    ours: Callable[[], Awaitable[float]],
    baseline: Callable[[], Awaitable[float]],
    rounds: int,
    *,
    label: str,
) -> ABRounds:
    """Run ``rounds`` A/B pairs, swapping the order every round; each call returns a throughput."""
    result = ABRounds()
    for index in range(rounds):
        order = ("ours", "baseline") if index % 2 == 0 else ("baseline", "ours")
        for side in order:
            value = await (ours() if side == "ours" else baseline())
            (result.ours if side == "ours" else result.baseline).append(value)
        progress(
            f"{label}: round {index + 1}/{rounds}: ours {result.ours[-1]:,.0f}/s, "
            f"baseline {result.baseline[-1]:,.0f}/s"
        )
    return result


# -- backends --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Backends:
    database_url: str  # the scratch database, migrated
    redis_url: str  # the bench's own db number
    source: str


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def bench_redis_url(url: str, *, explicit: bool) -> str:
    """The bench's own Redis db: the one named in ``BENCH_REDIS_URL``, else ``BENCH_REDIS_DB``."""
    if explicit and urlsplit(url).path.strip("/"):
        return url
    db = int(os.environ.get("BENCH_REDIS_DB") or DEFAULT_BENCH_REDIS_DB)
    return with_path(url, f"/{db}")


@contextlib.contextmanager
def _servers() -> Iterator[tuple[str, str, str]]:
    """(Postgres admin DSN, Redis URL, description), starting embedded servers where unset."""
    pg = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    redis_env = os.environ.get("BENCH_REDIS_URL")
    redis = redis_env or os.environ.get("TEST_REDIS_URL")
    with contextlib.ExitStack() as stack:
        sources = []
        if not pg or not redis:
            from cli.embedded import EmbeddedPostgres, EmbeddedRedis

            root = Path(tempfile.mkdtemp(prefix="fmhl-bench-"))
            stack.callback(shutil.rmtree, root, True)
            if not pg:
                server = EmbeddedPostgres(root / "pg").start()
                stack.callback(server.destroy)
                pg = server.dsn
                sources.append("embedded postgres")
            if not redis:
                redis_server = EmbeddedRedis(root / "redis").start()
                stack.callback(redis_server.stop)
                redis = redis_server.url
                sources.append("embedded redis")
        sources = sources or ["servers from the environment"]
        yield pg, bench_redis_url(redis, explicit=bool(redis_env)), ", ".join(sources)


@contextlib.asynccontextmanager
async def bench_backends(
    admin_dsn: str | None = None, redis_url: str | None = None
) -> AsyncIterator[Backends]:
    """A migrated scratch database and a flushed Redis db, both cleaned up at the end.

    ``admin_dsn``/``redis_url`` given (the smoke test passes the test session's servers) skip the
    environment and embedded servers; the Redis URL is then used as is.
    """
    with contextlib.ExitStack() as stack:
        if admin_dsn is None or redis_url is None:
            admin_dsn, redis_url, source = stack.enter_context(_servers())
        else:
            source = "given servers"
        name = f"fmhl_bench_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        dsn = with_path(admin_dsn, f"/{name}")
        from shared.infra.redis import create_redis

        redis = create_redis(redis_url)
        try:
            await redis.flushdb()
            await migrate(dsn)
            yield Backends(dsn, redis_url, source)
        finally:
            with contextlib.suppress(Exception):
                await redis.flushdb()
            await redis.aclose()
            admin = await asyncpg.connect(admin_dsn)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")

"""``python -m bench [CASE ...]`` (``make bench``): run the cases, print one table, write JSON.

``BENCH_SCALE`` = ``1m`` (default: 1,000,000 DLQ rows, 1,000,000 queued jobs, every case),
``10m`` (10,000,000 DLQ rows: the admin-API cases only unless cases are named) or ``toy`` (tiny
sizes, one round: what ``make test`` runs so no case rots). Backends: see ``bench.common``.

Results go to ``bench/results.json`` (``bench/results-10m.json`` at 10m; nothing at toy unless
``BENCH_RESULTS`` names a file). Exit status 0 when every target is met, 1 when one is missed or
a case failed: a missed target is printed as ``MISSED``, never passes silently.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench import (
    cleanup_case,
    http_cases,
    live_jobs_case,
    login_case,
    metrics_case,
    reconcile,
    redrive_case,
    scale_out_case,
    storm_case,
    tracing_case,
    worker_cases,
)
from bench.common import (
    CONSOLE,
    Backends,
    Result,
    Scale,
    bench_backends,
    machine,
    progress,
    quiet_stdout,
    scale_from_env,
)
from bench.dlq_data import analyze, seed_dlq, seed_queued_jobs
from shared.infra.logs import configure_logging
from shared.infra.redis import create_redis
from shared.infra.tracing import configure_tracing

BENCH_DIR = Path(__file__).resolve().parent
Case = Callable[[Backends, Scale], Awaitable[list[Result]]]


async def _api(backends: Backends, scale: Scale) -> list[Result]:
    return await http_cases.api_cases(backends, scale, f"{scale.dlq_rows:,} DLQ rows")


async def _console(backends: Backends, scale: Scale) -> list[Result]:
    """The console engineer's ``bench/console.py``, when it exists."""
    if importlib.util.find_spec("bench.console") is None:
        progress("console: bench/console.py does not exist (yet); skipped")
        return []
    from bench import console  # type: ignore[attr-defined,unused-ignore]

    rows: list[dict[str, Any]] = await asyncio.to_thread(
        console.run_console_bench, backends.database_url, backends.redis_url, scale.dlq_rows
    )
    return [_result_from_dict(row) for row in rows]


def _result_from_dict(row: dict[str, Any]) -> Result:
    target = row.get("target")
    if isinstance(target, int | float):  # a bare number is an upper bound on a latency
        target = f"< {target:g}"
    return Result(
        case=str(row.get("case", "console")),
        metric=str(row.get("metric", "")),
        value=float(row.get("value", float("nan"))),
        unit=str(row.get("unit", "")),
        baseline=row.get("baseline"),
        ratio=row.get("ratio"),
        target=target,
        passed=row.get("pass"),
        note=str(row.get("note", "")),
    )


# name -> (case, needs the queued-jobs zsets)
CASES: dict[str, tuple[Case, bool]] = {
    "overhead": (worker_cases.overhead_case, False),
    "storm": (storm_case.storm_case, False),
    "scale_out": (scale_out_case.scale_out_case, False),
    "live": (http_cases.live_case, False),
    # before the queued-jobs seed: its worker drains its queue in burst mode, and the seed fills
    # every queue (report_export too) with jobs of functions no bench worker has
    "tracing": (tracing_case.tracing_case, False),
    "api": (_api, True),
    "metrics": (metrics_case.metrics_case, True),
    "live_jobs": (live_jobs_case.live_jobs_case, False),
    "console": (_console, True),
    "cleanup": (cleanup_case.cleanup_case, False),
    "reconcile": (reconcile.reconcile_case, False),
    "login_burst": (login_case.login_burst_case, False),
    "redrive": (redrive_case.redrive_case, False),
}
DEFAULT_CASES: dict[str, tuple[str, ...]] = {"10m": ("api",)}


async def run_cases(
    scale: Scale,
    names: Sequence[str],
    *,
    admin_dsn: str | None = None,
    redis_url: str | None = None,
) -> list[Result]:
    """Seed the data, run ``names`` in order; a case that raises becomes a failed ``ERROR`` row."""
    results: list[Result] = []
    configure_logging("INFO", "json")  # as in production; stdout is /dev/null while cases run
    # OTEL_* in the environment turns tracing on here (the in-process worker cases) and in the
    # processes the cases start (``fmhl-ops serve``): the same cases then measure its cost.
    configure_tracing("fmhl-ops-bench")
    async with bench_backends(admin_dsn, redis_url) as backends:
        progress(f"scale {scale.name}; backends: {backends.source}; {machine()}")
        results.append(await _seed_dlq(backends, scale))
        queued = False
        for name in names:
            case, needs_queued = CASES[name]
            if needs_queued and not queued:
                results.append(await _seed_queued(backends, scale))
                queued = True
            started = time.perf_counter()
            try:
                results.extend(await case(backends, scale))
            except Exception as exc:
                traceback.print_exc(file=CONSOLE)
                results.append(
                    Result(name, "ERROR", float("nan"), "", target="ran", passed=False, note=repr(exc)[:300])
                )
            progress(f"{name} done in {time.perf_counter() - started:.1f} s")
    return results


async def _seed_dlq(backends: Backends, scale: Scale) -> Result:
    progress(f"seeding {scale.dlq_rows:,} DLQ rows ({scale.fingerprints:,} fingerprints, 10 % unresolved)")
    conn = await asyncpg.connect(backends.database_url)
    try:
        seconds = await seed_dlq(conn, scale.dlq_rows, scale.fingerprints)
        started = time.perf_counter()
        await analyze(conn)
        vacuum = time.perf_counter() - started
    finally:
        await conn.close()
    return Result(
        "data",
        f"seed {scale.dlq_rows:,} DLQ rows (INSERT ... SELECT generate_series)",
        scale.dlq_rows / seconds,
        "rows/s",
        note=f"{seconds:.1f} s, then VACUUM ANALYZE {vacuum:.1f} s",
    )


async def _seed_queued(backends: Backends, scale: Scale) -> Result:
    progress(f"seeding {scale.queued_jobs:,} queued jobs (pipelined ZADD)")
    redis = create_redis(backends.redis_url)
    try:
        seconds = await seed_queued_jobs(redis, scale.queued_jobs)
    finally:
        await redis.aclose()
    return Result("data", f"seed {scale.queued_jobs:,} queued jobs", scale.queued_jobs / seconds, "jobs/s")


# -- output ---------------------------------------------------------------------------------------
def _fmt(value: float | None, unit: str = "") -> str:
    if value is None or value != value:  # NaN
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}".rstrip()


def _verdict(result: Result) -> str:
    if result.passed is None:
        return ""
    return "ok" if result.passed else "MISSED"


def table(results: Sequence[Result]) -> str:
    header = ("case", "metric", "value", "baseline", "ratio", "target", "result")
    rows = [
        (
            r.case,
            r.metric,
            _fmt(r.value, r.unit),
            _fmt(r.baseline, r.unit) if r.baseline is not None else "",
            f"{r.ratio:.2f}x" if r.ratio is not None else "",
            r.target or "",
            _verdict(r),
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"  {r.case} / {r.metric}: {r.note}" for r in results if r.note]
    return "\n".join([*lines, "", "notes:", *notes])


def results_path(scale: Scale) -> Path | None:
    if os.environ.get("BENCH_RESULTS"):
        return Path(os.environ["BENCH_RESULTS"])
    return {"1m": BENCH_DIR / "results.json", "10m": BENCH_DIR / "results-10m.json"}.get(scale.name)


def code_version() -> str:
    """HEAD, and which product paths had uncommitted changes (the run used the working tree)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "shared", "service", "worker", "cli", "sql").splitlines()
    return f"{head}" + (f" + uncommitted changes in {len(dirty)} product file(s)" if dirty else "")


def write_results(
    path: Path, scale: Scale, results: Sequence[Result], seconds: float, *, started_at: str, code: str
) -> None:
    document = {
        "scale": scale.name,
        "date": started_at,
        "machine": machine(),
        "code": code,
        "duration_seconds": round(seconds, 1),
        "results": [r.as_json() for r in results],
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")


def main(argv: list[str]) -> int:
    scale = scale_from_env()
    names = argv or list(DEFAULT_CASES.get(scale.name, CASES))
    unknown = [name for name in names if name not in CASES]
    if unknown:
        print(f"unknown case {', '.join(unknown)}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    # the code and time the run started with (others may commit while it runs)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    code = code_version()
    started = time.perf_counter()
    with quiet_stdout():
        results = asyncio.run(run_cases(scale, names))
    seconds = time.perf_counter() - started
    print(table(results))
    print(f"\nscale {scale.name}; {machine()}; code {code}; started {started_at}")
    missed = [r for r in results if r.passed is False]
    checked = [r for r in results if r.passed is not None]
    met = len(checked) - len(missed)
    print(f"\n{met} of {len(checked)} targets met; {len(missed)} MISSED; {seconds / 60:.1f} min")
    path = results_path(scale)
    if path is not None:
        write_results(path, scale, results, seconds, started_at=started_at, code=code)
        print(f"wrote {path}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

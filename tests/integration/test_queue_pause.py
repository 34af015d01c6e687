"""Queue pause/resume: the shared use cases (exactly once, audited, refusals), the worker gate
with a real in-process ``FmhlWorker`` over real Redis, and ``fmhl-ops queue`` as a process.

Process-level acceptance (two worker processes, SIGKILL, an SMTP server answering 451) is in
``tests/e2e/test_queue_pause_processes.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import pytest

from shared.controls.pause import pause_queue, resume_queue
from shared.infra.config import Settings
from shared.infra.errors import Conflict, Invalid
from shared.jobs.enqueue import enqueue
from shared.jobs.pause_state import PAUSE_REFRESH_SECONDS, read_pause
from shared.jobs.queues import DISTRIBUTE_LEAD, EMAIL_SEND, SCHEDULER
from tests.procs import FMHL_OPS, base_env
from tests.worker_support import job, worker_running

QUEUE = EMAIL_SEND


async def _audit(pool: Any) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT actor, action, target_type, target_id, metadata FROM audit_log "
        "WHERE action LIKE 'queue.%' ORDER BY id"
    )
    return [dict(row) for row in rows]


async def test_pause_and_resume_are_exactly_once_and_audited(clean_db: Any, redis: Any) -> None:
    async with clean_db.acquire() as conn:
        state = await pause_queue(conn, redis, queue=QUEUE, actor="ops@example.test", reason="  SMTP down  ")
        assert (state.by, state.reason) == ("ops@example.test", "SMTP down")
        assert await read_pause(redis, QUEUE) == state
        with pytest.raises(Conflict) as again:
            await pause_queue(conn, redis, queue=QUEUE, actor="other@example.test", reason="me too")
        assert again.value.code == "already_paused" and "ops@example.test" in again.value.message
        assert await read_pause(redis, QUEUE) == state  # the first pause stands
        ended = await resume_queue(conn, redis, queue=QUEUE, actor="ops@example.test", reason="provider back")
        assert ended == state and await read_pause(redis, QUEUE) is None
        with pytest.raises(Conflict) as twice:
            await resume_queue(conn, redis, queue=QUEUE, actor="ops@example.test")
        assert twice.value.code == "not_paused"
    rows = await _audit(clean_db)
    assert [(r["action"], r["target_type"], r["target_id"]) for r in rows] == [
        ("queue.pause", "queue", QUEUE),
        ("queue.resume", "queue", QUEUE),
    ]  # the refused calls left no audit row
    assert rows[0]["metadata"] == {"reason": "SMTP down"}
    assert rows[1]["metadata"]["reason"] == "provider back" and rows[1]["metadata"]["paused_by"] == state.by


async def test_concurrent_pauses_and_resumes_have_one_winner(clean_db: Any, redis: Any) -> None:
    async def call(use_case: Any, **kwargs: Any) -> Any:
        async with clean_db.acquire() as conn:
            try:
                return await use_case(conn, redis, queue=QUEUE, **kwargs)
            except Conflict as exc:
                return exc

    for _ in range(5):
        pauses = await asyncio.gather(
            *(call(pause_queue, actor=f"admin-{n}", reason="incident") for n in range(4))
        )
        assert sum(not isinstance(r, Conflict) for r in pauses) == 1, pauses
        resumes = await asyncio.gather(*(call(resume_queue, actor=f"admin-{n}") for n in range(4)))
        assert sum(not isinstance(r, Conflict) for r in resumes) == 1, resumes
    rows = await _audit(clean_db)
    assert [r["action"] for r in rows] == ["queue.pause", "queue.resume"] * 5


@pytest.mark.parametrize(
    ("queue", "reason", "code"),
    [
        (SCHEDULER, "cron too", "queue_not_pausable"),
        ("nope", "typo", "unknown_queue"),
        (QUEUE, "   ", "reason_required"),
        (QUEUE, "x" * 501, "reason_too_long"),
    ],
)
async def test_refused_pauses_are_invalid_and_change_nothing(
    clean_db: Any, redis: Any, queue: str, reason: str, code: str
) -> None:
    async with clean_db.acquire() as conn:
        with pytest.raises(Invalid) as refused:
            await pause_queue(conn, redis, queue=queue, actor="ops", reason=reason)
    assert refused.value.code == code
    assert await redis.keys("fmhl:queue:paused:*") == []
    assert await _audit(clean_db) == []


async def test_a_worker_started_while_paused_stays_idle_and_runs_everything_once_on_resume(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    started: list[tuple[str, float]] = []

    async def record(ctx: dict[str, Any], n: int) -> None:
        started.append((str(ctx["job_id"]), time.time()))

    async with clean_db.acquire() as conn:
        await pause_queue(conn, redis, queue=QUEUE, actor="ops", reason="test")
    ids = [await enqueue(redis, "record", queue=QUEUE, n=n) for n in range(5)]
    async with worker_running(QUEUE, settings, clean_db, redis, [job(QUEUE, "record", record)]) as worker:
        await asyncio.sleep(1.5)
        assert started == [] and worker.pause_gate.paused
        assert await redis.zcard(QUEUE) == 5
        assert all([await redis.get(f"arq:retry:{job_id}") is None for job_id in ids])  # no try burnt
        async with clean_db.acquire() as conn:
            await resume_queue(conn, redis, queue=QUEUE, actor="ops")
        resumed_at = time.time()
        deadline = time.monotonic() + 10
        while len(started) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # a job started later than one refresh interval (plus a few polls) after the resume?
        assert max(t for _, t in started) - resumed_at < PAUSE_REFRESH_SECONDS + 1.0
        # and pausing again stops the next enqueue from starting
        async with clean_db.acquire() as conn:
            await pause_queue(conn, redis, queue=QUEUE, actor="ops", reason="again")
        await asyncio.sleep(PAUSE_REFRESH_SECONDS + 0.2)
        late = await enqueue(redis, "record", queue=QUEUE, n=99)
        await asyncio.sleep(1.0)
        assert late not in {job_id for job_id, _ in started}
    assert sorted(job_id for job_id, _ in started) == sorted(ids)  # each exactly once


# --- fmhl-ops queue as a process ----------------------------------------------------------------


async def _fmhl_ops(
    args: Sequence[str], database_url: str, redis_url: str
) -> subprocess.CompletedProcess[str]:
    env = base_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    return await asyncio.to_thread(
        subprocess.run, [FMHL_OPS, *args], env=env, capture_output=True, text=True, timeout=60
    )


def _printed(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the command printed for the operator (log lines are JSON on stdout too)."""
    return [line for line in result.stdout.splitlines() if not line.startswith("{")]


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


async def test_cli_pauses_and_resumes_with_one_line_errors(
    clean_db: Any, redis: Any, database_url: str, redis_url: str
) -> None:
    paused = await _fmhl_ops(["queue", "pause", QUEUE, "--reason", "SMTP outage"], database_url, redis_url)
    assert paused.returncode == 0, paused.stderr
    assert _printed(paused)[0].startswith(f"paused {QUEUE} at ")
    state = await read_pause(redis, QUEUE)
    assert state is not None and state.by.startswith("cli:") and state.reason == "SMTP outage"

    status = await _fmhl_ops(["queue", "status"], database_url, redis_url)
    assert status.returncode == 0, status.stderr
    lines = dict(line.split("\t", 1) for line in _printed(status))
    assert lines[QUEUE].startswith("paused since") and lines[DISTRIBUTE_LEAD] == "running"

    again = _one_line_error(
        await _fmhl_ops(["queue", "pause", QUEUE, "--reason", "x"], database_url, redis_url)
    )
    assert "already paused" in again
    assert "not be paused" in _one_line_error(
        await _fmhl_ops(["queue", "pause", SCHEDULER, "--reason", "x"], database_url, redis_url)
    )
    assert "unknown queue" in _one_line_error(
        await _fmhl_ops(["queue", "pause", "emails", "--reason", "x"], database_url, redis_url)
    )

    resumed = await _fmhl_ops(["queue", "resume", QUEUE], database_url, redis_url)
    assert resumed.returncode == 0, resumed.stderr
    assert await read_pause(redis, QUEUE) is None
    assert "not paused" in _one_line_error(
        await _fmhl_ops(["queue", "resume", QUEUE], database_url, redis_url)
    )
    rows = await _audit(clean_db)
    assert [r["action"] for r in rows] == ["queue.pause", "queue.resume"]
    assert all(r["actor"].startswith("cli:") for r in rows)

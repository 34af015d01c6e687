"""Incident controls in a real browser (Debian's chromium via Playwright) against real processes.

``fmhl-ops serve`` and ``fmhl-ops worker email_send`` run as processes, the worker delivering to a
local SMTP server that holds one message (``slow@``) until the test releases it, so that job is
really running in the worker process. The on-call admin, from the console only: runs a scheduled
job now (the worker delivers it), cancels another (kept as a cancelled DLQ row), aborts the
running one (the worker cancels it and records it as aborted), and pauses then resumes the queue
from the overview. Screenshots go to ``tests/artifacts/console/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import email
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pyotp
import pytest
from cryptography.fernet import Fernet
from playwright.async_api import Browser

from cli.embedded import free_port
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import EMAIL_SEND
from shared.jobs.retry_trace import record_retry
from tests.console import test_console_browser as console_browser
from tests.console.test_console_browser import (
    Shots,
    _create_account,
    _new_context,
    _sign_in,
    pytestmark,  # noqa: F401  (skipped without Debian's chromium)
)
from tests.procs import Proc, wait_http, wait_until
from tests.smtp import smtp_env, smtp_server

JOBS = f"/console/queues/{EMAIL_SEND}/jobs"

# The browser of the console test (one Chromium launch per test).
browser = console_browser.browser


class HoldingSmtp:
    """Accepts mail at once, except for ``slow@`` recipients: held until ``release`` (then 451)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.delivered: list[str] = []
        self.held = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if any(rcpt.startswith("slow@") for rcpt in envelope.rcpt_tos):
            self.held.set()
            await asyncio.to_thread(self.release.wait, 25)
            return "451 4.3.0 Try again later"
        message = email.message_from_bytes(envelope.content)
        self.delivered.append(str(message.get("X-FMHL-Idempotency-Key", "")))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, HoldingSmtp]]:
    handler = HoldingSmtp()
    with smtp_server(handler) as port:
        try:
            yield port, handler
        finally:
            handler.release.set()


@dataclass
class Stack:
    base: str
    email: str
    totp: pyotp.TOTP
    procs: tuple[Proc, ...]


@pytest.fixture
async def stack(
    database_url: str, redis_url: str, clean_db: Any, redis: Any, smtp: tuple[int, HoldingSmtp]
) -> AsyncIterator[Stack]:
    env = smtp_env(
        database_url,
        redis_url,
        smtp[0],
        MFA_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        CONSOLE_INSECURE_COOKIES="1",
    )
    totp = await asyncio.to_thread(_create_account, env, "oncall@example.test", "admin")
    port = free_port()
    server = Proc(["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0"], env).start()
    worker = Proc(["worker", EMAIL_SEND], env | {"WORKER_METRICS_PORT": str(free_port())}).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=30, proc=server)
        yield Stack(f"http://127.0.0.1:{port}", "oncall@example.test", totp, (server, worker))
    finally:
        worker.stop()
        server.stop()


async def _send(redis: Any, to: str, key: str, **kwargs: Any) -> str:
    job_id = await enqueue(
        redis, "send_email", to=to, template="low_balance", idempotency_key=key,
        context={"provider_name": "Acme", "balance": "3.00", "lead_price": "10.00"}, **kwargs,
    )  # fmt: skip
    assert job_id is not None
    return job_id


@pytest.mark.timeout(150)
async def test_on_call_runs_now_cancels_aborts_and_pauses_from_the_console(
    stack: Stack, browser: Browser, redis: Any, clean_db: Any, smtp: tuple[int, HoldingSmtp]
) -> None:
    _, holding = smtp
    shots = Shots()
    slow = await _send(redis, "slow@example.test", "slow-1", correlation_id="incident-42")

    async def slow_is_running() -> bool:
        listed = [job for beat in await read_heartbeats(redis) for job, _ in beat.running]
        return holding.held.is_set() and slow in listed

    await wait_until(slow_is_running, 30, "the slow job running in the worker", *stack.procs)
    later = await _send(redis, "later@example.test", "later-1", defer_by_seconds=3600)
    unwanted = await _send(redis, "unwanted@example.test", "unwanted-1", defer_by_seconds=3600)
    for n in range(3):  # waiting for their next try, as the failure decorator leaves them
        delay = 240 + 30 * n
        to, key = f"provider-{n}@example.test", f"retry-{n}"
        waiting = await _send(redis, to, key, defer_by_seconds=delay, correlation_id=f"lead-batch-{n}")
        await redis.set(f"arq:retry:{waiting}", 2 + n)
        await record_retry(
            redis, queue=EMAIL_SEND, job_id=waiting, job_try=2 + n, max_tries=6, delay_seconds=delay,
            error_type="EmailTemporaryFailure", error_message="451 4.3.0 Try again later (smtp.example)",
        )  # fmt: skip

    context, page, problems = await _new_context(browser)
    await _sign_in(page, stack.base, stack.email, stack.totp)

    await page.locator(f"a[href='{JOBS}']").click()  # the overview's link
    await page.get_by_role("link", name="retrying", exact=True).click()
    await page.get_by_text("lead-batch-2").wait_for()
    await shots.take(page, "live-jobs-retrying")

    # Run now: a scheduled job becomes due; the worker delivers it.
    await page.goto(f"{stack.base}{JOBS}?state=scheduled")
    await page.get_by_role("cell", name=later[:12]).wait_for()
    await shots.take(page, "live-jobs-scheduled")
    await page.locator(f"a[href='{JOBS}/{later}/run-now']").click()
    await page.get_by_role("heading", name="Run now this scheduled job?").wait_for()
    await page.get_by_role("button", name="Run now", exact=True).click()
    await page.get_by_role("status").filter(has_text="The job is due now").wait_for()

    async def delivered() -> bool:
        return "later-1" in holding.delivered

    await wait_until(delivered, 20, "the run-now job delivered", *stack.procs)

    # Cancel: removed and kept as a resolved ``cancelled`` DLQ row.
    await page.goto(f"{stack.base}{JOBS}/{unwanted}")
    await page.get_by_role("link", name="Cancel…").click()
    await page.get_by_label("Reason (optional)").fill("customer asked us not to send it")
    await page.get_by_role("button", name="Cancel", exact=True).click()
    await page.get_by_role("status").filter(has_text="Job cancelled").wait_for()
    assert await redis.zscore(EMAIL_SEND, unwanted) is None

    # Abort: the running job, through arq's abort in the worker process.
    await page.get_by_role("link", name="running", exact=True).click()
    await page.get_by_role("cell", name=slow[:12]).wait_for()
    assert await page.get_by_text("incident-42").is_visible()
    await shots.take(page, "live-jobs-running")
    await page.get_by_role("link", name="Abort…").click()
    await page.get_by_role("button", name="Abort", exact=True).click()
    await page.get_by_role("status").filter(has_text="Abort requested").wait_for()

    async def aborted() -> bool:
        reason = await clean_db.fetchval("SELECT reason FROM dead_letter_queue WHERE job_id = $1", slow)
        return bool(reason == "aborted")

    await wait_until(aborted, 20, "the worker recording the abort", *stack.procs)
    holding.release.set()

    # Pause and resume from the overview, with a required reason.
    await page.get_by_role("link", name="Overview").click()
    await page.locator(f"a[href='/console/queues/{EMAIL_SEND}/pause']").click()
    await page.get_by_label("Reason").fill("SMTP provider outage")
    await page.get_by_role("button", name="Pause", exact=True).click()
    await page.wait_for_url(f"{stack.base}/console?done=paused")
    await page.get_by_text("SMTP provider outage").wait_for()
    assert await redis.get(f"fmhl:queue:paused:{EMAIL_SEND}") is not None
    await shots.take(page, "overview-paused")
    await page.locator(f"a[href='/console/queues/{EMAIL_SEND}/resume']").click()
    await page.get_by_role("button", name="Resume", exact=True).click()
    await page.wait_for_url(f"{stack.base}/console?done=resumed")
    assert await redis.get(f"fmhl:queue:paused:{EMAIL_SEND}") is None
    await context.close()
    assert not problems, problems

    rows = {
        r["job_id"]: r
        for r in await clean_db.fetch("SELECT job_id, reason, resolved_by, resolution FROM dead_letter_queue")
    }
    assert rows[unwanted]["reason"] == "cancelled" and rows[unwanted]["resolved_by"] == stack.email
    assert rows[slow]["reason"] == "aborted" and rows[slow]["resolution"] == "manual"
    assert later not in rows and holding.delivered.count("later-1") == 1
    audited = [r["action"] for r in await clean_db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert [a for a in audited if a.startswith(("job.", "queue."))] == [
        "job.run_now", "job.cancel", "job.abort", "queue.pause", "queue.resume",
    ]  # fmt: skip

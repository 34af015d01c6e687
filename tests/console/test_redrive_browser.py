"""Redrive tasks in a real browser (issue 19): an admin creates a task from a failure group's
"Retry all…", watches its progress update live, pauses, resumes and cancels it. Real processes:
``fmhl-ops serve``, ``fmhl-ops worker email_send`` (log backend) and ``fmhl-ops worker scheduler``
(the executor)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from cli.embedded import free_port
from shared.jobs.queues import SCHEDULER
from tests.console import test_console_browser as console_browser
from tests.console.test_console_browser import CHROMIUM, Shots, Stack, _new_context, _sign_in
from tests.e2e.test_redrive_processes import FAILED_EMAILS
from tests.procs import Proc, base_env, wait_until

# The real-process stack (serve + email worker, an admin account) and the browser of the console test.
stack = console_browser.stack
browser = console_browser.browser

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="no chromium")


async def _number(page: Page, testid: str) -> int:
    return int((await page.get_by_test_id(testid).inner_text()).replace(",", ""))


@pytest.mark.timeout(150)
async def test_on_call_redrives_a_group_and_pauses_resumes_cancels_it(
    stack: Stack,
    browser: Browser,
    clean_db: Any,
    database_url: str,
    redis_url: str,
) -> None:
    await clean_db.execute(FAILED_EMAILS, 300)
    env = base_env(DATABASE_URL=database_url, REDIS_URL=redis_url, WORKER_METRICS_PORT=str(free_port()))
    scheduler = Proc(["worker", SCHEDULER], env).start()
    shots = Shots()
    try:
        context, page, problems = await _new_context(browser)
        await _sign_in(page, stack.base, stack.admin_email, stack.admin_totp)
        await page.goto(f"{stack.base}/console/groups")
        await page.get_by_role("link", name="Retry all…").click()
        await page.get_by_text("300 unresolved entries").wait_for()
        await page.get_by_text("10 jobs/s, at most 20 in flight").wait_for()
        await page.get_by_label("Reason (optional)").fill("SMTP provider recovered")
        await page.get_by_role("button", name="Retry 300 entries").click()
        await page.wait_for_url("**/console/redrives/*?done=created")
        task_url = page.url.split("?")[0]
        assert (
            await page.get_by_role("status").inner_text()
            == "Redrive task created: it starts within a few seconds."
        )

        # progress updates by itself (htmx every second), no reload
        await wait_until(lambda: _sent_at_least(page, 15), 60, "the task to send 15 entries", interval=0.2)
        await wait_until(
            lambda: _number_at_least(page, "succeeded", 5), 30, "outcomes to come in", interval=0.2
        )
        assert await page.get_by_test_id("state").inner_text() == "running"
        await shots.take(page, "redrive-running")

        await page.get_by_role("button", name="Pause").click()
        await page.wait_for_url(f"{task_url}?done=pause")
        assert await page.get_by_test_id("state").inner_text() == "paused"
        await asyncio.sleep(1.0)  # a batch under way when the pause committed may still land
        held = await _number(page, "sent")
        await asyncio.sleep(2.5)
        assert await _number(page, "sent") == held  # nothing more is sent while paused
        await shots.take(page, "redrive-paused")

        await page.get_by_role("button", name="Resume").click()
        await page.wait_for_url(f"{task_url}?done=resume")
        await wait_until(lambda: _sent_at_least(page, held + 10), 30, "sending to resume", interval=0.2)

        await page.get_by_role("button", name="Cancel").click()
        await page.wait_for_url(f"{task_url}?done=cancel")
        assert await page.get_by_test_id("state").inner_text() == "cancelled"
        assert await page.get_by_role("button", name="Resume").count() == 0
        await shots.take(page, "redrive-cancelled")
        row = await clean_db.fetchrow("SELECT state, sent, total FROM redrive_tasks")
        assert row["state"] == "cancelled" and held < row["sent"] < row["total"] == 300
        await page.goto(f"{stack.base}/console/redrives")
        await page.get_by_role("link", name="retry all email_send/fp-smtp-outage").wait_for()
        await context.close()
        assert not problems, problems
    finally:
        scheduler.stop()


async def _sent_at_least(page: Page, n: int) -> bool:
    return await _number(page, "sent") >= n


async def _number_at_least(page: Page, testid: str, n: int) -> bool:
    return await _number(page, testid) >= n

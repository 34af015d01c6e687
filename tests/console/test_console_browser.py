"""The console in a real browser (Debian's chromium driven by Playwright) against real processes.

``fmhl-ops serve`` and ``fmhl-ops worker email_send`` run as processes; accounts come from
``fmhl-ops admin create`` and sign in with a TOTP code computed from the printed ``otpauth://``
URI. The admin finds a captured failure on the groups page, opens it, retries it, and watches
the retry (which fails again, for the same reason) appear in the entry's lineage. A ``support``
browser sees no action control, and its forged POSTs get 403; a logged-out cookie gets the
sign-in page. Screenshots of every page go to ``tests/artifacts/console/`` (git-ignored).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from cryptography.fernet import Fernet
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from cli.embedded import free_port
from shared.jobs.enqueue import enqueue
from shared.jobs.queues import EMAIL_SEND
from tests.procs import FMHL_OPS, Proc, base_env, wait_http, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse battery staple"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@dataclass
class Stack:
    base: str
    admin_email: str
    admin_totp: pyotp.TOTP
    support_email: str
    support_totp: pyotp.TOTP
    server: Proc
    worker: Proc


def _create_account(env: dict[str, str], email: str, role: str) -> pyotp.TOTP:
    result = subprocess.run(
        [FMHL_OPS, "admin", "create", "--email", email, "--role", role],
        input=PASSWORD + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    uri = next(line for line in result.stdout.splitlines() if line.startswith("otpauth://"))
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    return totp


@pytest.fixture
async def stack(database_url: str, redis_url: str, clean_db: Any, redis: Any) -> AsyncIterator[Stack]:
    env = base_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MFA_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        CONSOLE_INSECURE_COOKIES="1",  # plain HTTP on 127.0.0.1 (a Secure cookie would never return)
    )
    admin_totp, support_totp = await asyncio.gather(
        asyncio.to_thread(_create_account, env, "oncall@example.test", "admin"),
        asyncio.to_thread(_create_account, env, "helpdesk@example.test", "support"),
    )
    port = free_port()
    server = Proc(["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "0"], env).start()
    worker = Proc(["worker", EMAIL_SEND], env | {"WORKER_METRICS_PORT": str(free_port())}).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=30, proc=server)
        yield Stack(
            f"http://127.0.0.1:{port}",
            "oncall@example.test",
            admin_totp,
            "helpdesk@example.test",
            support_totp,
            server,
            worker,
        )
    finally:
        worker.stop()
        server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    # Playwright gives each launch a fresh temporary profile (user-data-dir) and removes it.
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            await launched.close()


class Shots:
    def __init__(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    async def take(self, page: Page, name: str) -> None:
        path = ARTIFACTS / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)


async def _new_context(browser: Browser) -> tuple[BrowserContext, Page, list[str]]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status == 404 else None)
    return context, page, problems


async def _sign_in(page: Page, base: str, email: str, totp: pyotp.TOTP) -> None:
    await page.goto(f"{base}/console")
    assert page.url.startswith(f"{base}/console/sign-in")
    remaining = 30 - time.time() % 30
    if remaining < 3:  # don't type a code that expires in flight
        await asyncio.sleep(remaining + 0.2)
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_label("Authenticator code").fill(totp.now())
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/console")


@pytest.mark.timeout(120)
async def test_on_call_signs_in_retries_a_failure_and_sees_its_lineage(
    stack: Stack, browser: Browser, redis: Any, clean_db: Any
) -> None:
    started = time.perf_counter()
    shots = Shots()
    await enqueue(
        redis,
        "send_email",
        to="customer@example.test",
        template="welcome_v2",
        context={"name": "Jane"},
        idempotency_key="browser-1",
        correlation_id="browser-test-1",
    )
    await enqueue(redis, "distribute_lead", lead_id="00000000-0000-4000-8000-000000000001")  # stays queued

    async def captured() -> bool:
        return bool(await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue"))

    await wait_until(captured, 30, "the failing job's DLQ entry", interval=0.2)

    context, page, problems = await _new_context(browser)
    sign_in_page = page
    await sign_in_page.goto(f"{stack.base}/console/sign-in")
    await shots.take(sign_in_page, "sign-in")
    await _sign_in(page, stack.base, stack.admin_email, stack.admin_totp)
    await page.get_by_role("heading", name="Workers").wait_for()
    assert await page.get_by_text("email_send").first.is_visible()
    await shots.take(page, "overview")
    async with page.expect_response(f"{stack.base}/console/live", timeout=8_000) as refreshed:
        pass  # htmx polls the live fragment every 5 s and swaps it in place
    assert (await refreshed.value).status == 200
    await page.get_by_role("heading", name="Workers").wait_for()

    await page.get_by_role("link", name="Failure groups").click()
    await page.wait_for_url(f"{stack.base}/console/groups")
    group_link = page.get_by_role("link", name="UnknownTemplate")
    await group_link.wait_for()
    await shots.take(page, "groups")
    await page.get_by_role("link", name="Retry all…").click()
    await page.get_by_text("1 unresolved entry").wait_for()
    await shots.take(page, "group-confirm")
    await page.go_back()

    await group_link.click()
    await page.wait_for_url("**/console/dlq?**")
    await shots.take(page, "dlq")
    await page.locator("table a[href^='/console/dlq/']").first.click()
    await page.wait_for_url("**/console/dlq/*")
    entry_url = page.url
    assert await page.get_by_text("welcome_v2").first.is_visible()
    assert await page.get_by_text("browser-test-1").is_visible()  # correlation id
    await shots.take(page, "entry")

    await page.get_by_role("button", name="Retry", exact=True).click()
    await page.wait_for_url(entry_url + "?done=retried")
    assert (
        await page.get_by_role("status").inner_text() == "Retry enqueued. The entry is resolved as retried."
    )
    assert await page.locator("h1 .badge").inner_text() == "retried"
    assert await page.get_by_role("button", name="Retry", exact=True).count() == 0

    async def lineage_shows_the_retry() -> bool:
        await page.reload()
        return await page.get_by_text("failed again as").count() > 0

    await wait_until(lineage_shows_the_retry, 30, "the retry's own DLQ entry in the lineage", interval=0.2)
    assert await page.get_by_text("dlq.retry").count() == 1  # the entry's audit history
    await shots.take(page, "entry-retried")
    await page.locator("ol.lineage a").last.click()
    await page.get_by_text("retried from").wait_for()

    await page.get_by_role("link", name="Audit log").click()
    await page.get_by_text("dlq.retry").first.wait_for()
    await shots.take(page, "audit")
    await page.get_by_role("link", name="Cron").click()
    await page.get_by_role("heading", name="cleanup_dlq").wait_for()
    await shots.take(page, "cron")
    await page.get_by_role("link", name="API docs").click()
    await page.locator(".swagger-ui .info .title").wait_for(timeout=20_000)
    assert await page.get_by_role("button", name="Authorize").count() == 1
    await shots.take(page, "docs")

    # Keyboard: the sign-out control is reachable with Tab from the top of a page.
    await page.goto(f"{stack.base}/console/groups")
    for _ in range(12):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement && document.activeElement.textContent") == "Sign out":
            break
    else:
        raise AssertionError("Sign out is not reachable by keyboard")

    # Sign out, then replay the old cookie: the sign-in page, not the console.
    old_cookies = await context.cookies()
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{stack.base}/console/sign-in")
    await context.add_cookies(old_cookies)  # type: ignore[arg-type]
    await page.goto(f"{stack.base}/console/groups")
    assert page.url.startswith(f"{stack.base}/console/sign-in")
    assert await page.get_by_role("heading", name="Sign in").is_visible()
    await context.close()
    assert not problems, problems  # no CSP violation, no script error (htmx, Swagger UI)

    retried = await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE retry_of IS NOT NULL")
    assert retried == 1
    print(f"browser run: {time.perf_counter() - started:.1f}s; screenshots in {ARTIFACTS}:")
    for path in shots.taken:
        print(f"  {path.name}: {path.stat().st_size // 1024} KiB")


@pytest.mark.timeout(120)
async def test_support_browser_has_no_action_controls_and_forged_posts_get_403(
    stack: Stack, browser: Browser, clean_db: Any
) -> None:
    entry_id = await clean_db.fetchval(
        """INSERT INTO dead_letter_queue (queue_name, job_id, function, error_type, error_message,
               fingerprint, attempts, reason, failed_at)
           VALUES ('email_send', 'job-support-1', 'send_email', 'SMTPServerDisconnected',
                   'Connection unexpectedly closed', 'fp-support', 6, 'exhausted', now())
           RETURNING id"""
    )
    context, page, problems = await _new_context(browser)
    await _sign_in(page, stack.base, stack.support_email, stack.support_totp)
    await Shots().take(page, "overview-support")
    for path in ("/console/groups", "/console/dlq", f"/console/dlq/{entry_id}", "/console/cron"):
        await page.goto(stack.base + path)
        forms = await page.locator("form[method=post]").evaluate_all("fs => fs.map(f => f.action)")
        assert forms == [f"{stack.base}/console/sign-out"], (path, forms)
        for label in ("Retry", "Resolve", "Retry all…", "Run now"):
            assert await page.get_by_role("button", name=label, exact=True).count() == 0
            assert await page.get_by_role("link", name=label, exact=True).count() == 0
    # Forged requests from this browser (its cookie, its own valid CSRF token): refused by role.
    csrf = await page.locator("input[name=csrf_token]").first.input_value()
    forged = await context.request.post(
        f"{stack.base}/console/dlq/{entry_id}/retry", form={"csrf_token": csrf}, max_redirects=0
    )
    assert forged.status == 403, await forged.text()
    no_token = await context.request.post(f"{stack.base}/console/dlq/{entry_id}/resolve", max_redirects=0)
    assert no_token.status == 403 and "CSRF" in await no_token.text()
    await context.close()
    assert not problems, problems
    assert (
        await clean_db.fetchval("SELECT resolved_at FROM dead_letter_queue WHERE id = $1", entry_id) is None
    )

"""Re-take the README's console screenshots from a living demo: ``python docs/screenshots/capture.py``.

Starts ``fmhl-ops dev --demo`` in a temporary directory (embedded Postgres and Redis, all workers,
demo data and failing jobs), signs in as the demo admin with a code from the printed TOTP URI in
Debian's chromium, retries one failure and runs one cron job so every page has something to
show, and writes one PNG per page here. Stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyotp
from playwright.async_api import Page, async_playwright

HERE = Path(__file__).resolve().parent
FMHL_OPS = str(Path(sys.executable).parent / "fmhl-ops")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _shoot(page: Page, name: str, *, full: bool = True) -> None:
    await page.screenshot(path=str(HERE / f"{name}.png"), full_page=full)
    print(f"{name}.png: {(HERE / f'{name}.png').stat().st_size // 1024} KiB")


async def capture(base: str, email: str, password: str, totp: pyotp.TOTP) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(f"{base}/console")
        await page.get_by_label("Email").fill(email)
        await _shoot(page, "sign-in", full=False)
        await page.get_by_label("Password").fill(password)
        await page.get_by_label("Authenticator code").fill(totp.now())
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{base}/console")
        await page.goto(f"{base}/console/groups")
        await page.locator("table a[href^='/console/dlq?']").first.click()
        await page.locator("table a[href^='/console/dlq/']").first.click()
        await page.get_by_role("button", name="Retry", exact=True).click()
        await page.goto(f"{base}/console/cron")
        await page.get_by_role("button", name="Run now").first.click()
        await asyncio.sleep(6)  # the retry fails again, the cron run finishes, heartbeats refresh
        await page.goto(f"{base}/console")
        await _shoot(page, "overview")
        await page.goto(f"{base}/console/groups")
        await _shoot(page, "groups")
        await page.get_by_role("link", name="Retry all…").first.click()
        await _shoot(page, "group-confirm", full=False)
        await page.goto(f"{base}/console/dlq")
        await _shoot(page, "dlq", full=False)
        await page.goto(f"{base}/console/audit")
        await page.locator("a[href^='/console/dlq/']").first.click()
        await page.reload()
        await _shoot(page, "entry")
        await page.goto(f"{base}/console/audit")
        await _shoot(page, "audit", full=False)
        await page.goto(f"{base}/console/cron")
        await _shoot(page, "cron")
        await page.goto(f"{base}/docs")
        await page.locator(".swagger-ui .info .title").wait_for()
        await _shoot(page, "docs", full=False)
        await browser.close()


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fmhl-shots-"))
    port = _free_port()
    log = (workdir / "dev.log").open("w+")
    dev = subprocess.Popen(
        [FMHL_OPS, "dev", "--demo", "--port", str(port)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "MFA_ENCRYPTION_KEY")
        }
        | {"LOG_FORMAT": "console", "LOG_LEVEL": "WARNING"},
    )
    try:
        deadline = time.monotonic() + 120
        while "demo:" not in (text := (workdir / "dev.log").read_text()):
            if dev.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fmhl-ops dev did not start:\n{text[-3000:]}")
            time.sleep(0.5)
        password = re.search(r"password: (\S+)", text)
        uri = re.search(r"(otpauth://\S+)", text)
        assert password and uri, text
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{base}/health/live").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        time.sleep(5)  # let the workers run the demo jobs
        totp = pyotp.parse_uri(uri.group(1))
        assert isinstance(totp, pyotp.TOTP)
        asyncio.run(capture(base, "admin@fmhl.local", password.group(1), totp))
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(timeout=60)
        except subprocess.TimeoutExpired:
            dev.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

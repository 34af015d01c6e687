"""The console over HTTP, in-process: sign-in through the login use case, every page, the
security headers, CSRF, the support role, group actions, cron run-now, and dependency failures.

The real-browser acceptance run is ``tests/console/test_console_browser.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from service.app import create_app
from service.console.security import SESSION_COOKIE
from shared.infra.config import Settings
from shared.jobs.cron_runs import CRON_JOB_NAMES
from shared.jobs.queues import SCHEDULER
from tests.factories import AdminAccount, create_admin, create_admin_session, create_dlq_entry
from tests.helpers import closed_port

PAGES = ("/console", "/console/live", "/console/groups", "/console/dlq", "/console/audit", "/console/cron")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Console:
    client: httpx.AsyncClient
    db: Any
    redis: Any
    settings: Settings
    admin: AdminAccount

    async def page(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.get(path, **kwargs)
        assert response.status_code < 500 or response.status_code == 503, (path, response.text[:500])
        return response

    async def csrf(self, path: str = "/console") -> str:
        match = CSRF.search((await self.page(path)).text)
        assert match, "signed-in pages carry the CSRF token"
        return match.group(1)


@contextlib.asynccontextmanager
async def console_client(
    settings: Settings, *, base_url: str = "http://127.0.0.1:8000", wait_for_db: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if wait_for_db:
            await asyncio.wait_for(app.state.ops.db.connected.wait(), timeout=20)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    """As ``fmhl-ops dev`` runs: plain HTTP on 127.0.0.1 with ``CONSOLE_INSECURE_COOKIES`` set."""
    return dataclasses.replace(
        settings, mfa_encryption_key=Fernet.generate_key().decode(), console_insecure_cookies=True
    )


@pytest.fixture
async def console(keyed: Settings, clean_db: Any, redis: Any) -> AsyncIterator[Console]:
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    async with console_client(keyed) as client:
        client.cookies.set(SESSION_COOKIE, token)
        yield Console(client, clean_db, redis, keyed, admin)


async def test_every_page_renders_with_the_security_headers(console: Console) -> None:
    entry_id = await create_dlq_entry(console.db, args=[1, "two"], kwargs={"to": "x@example.test"})
    timings = {}
    for path in (*PAGES, f"/console/dlq/{entry_id}", "/console/groups/email_send/fp-test/retry", "/docs"):
        started = time.perf_counter()
        response = await console.page(path)
        timings[path] = round((time.perf_counter() - started) * 1000, 1)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert response.headers["cache-control"] == "no-store"
        assert "<script>" not in response.text and " on" + "click=" not in response.text
    print("page render ms (in-process, tiny DB):", timings)
    metrics = (await console.client.get("/metrics")).text
    assert 'route="/console/dlq/{entry_id}"' in metrics  # labelled by template, like API routes
    missing = await console.client.get("/console/no-such-page")
    assert missing.status_code == 404 and "There is no such page" in missing.text
    detail = html.unescape((await console.page(f"/console/dlq/{entry_id}")).text)
    assert '"two"' in detail and "x@example.test" in detail
    assert "Retry</button>" in detail and "Resolve</button>" in detail
    assert '<label for="note">' in detail


async def test_static_assets_are_vendored_with_their_licenses(console: Console) -> None:
    for path in (
        "/console/static/console.css",
        "/console/static/vendor/htmx-2.0.11/htmx.min.js",
        "/console/static/vendor/htmx-2.0.11/LICENSE",
        "/console/static/vendor/swagger-ui-5.35.0/swagger-ui-bundle.js",
        "/console/static/vendor/swagger-ui-5.35.0/LICENSE",
        "/console/static/docs.js",
    ):
        response = await console.client.get(path)
        assert response.status_code == 200, path
    html = (await console.page("/docs")).text
    assert "//" not in re.sub(r"https?://[^\"']*", "", html).split("<body>")[0].replace("<!doctype", "")
    assert "cdn" not in html.lower()


async def test_signed_out_requests_go_to_the_sign_in_page(console: Console) -> None:
    console.client.cookies.clear()
    response = await console.client.get("/console/groups?queue=email_send")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fgroups%3Fqueue%3Demail_send"
    fragment = await console.client.get("/console/live", headers={"HX-Request": "true"})
    assert (
        fragment.status_code == 200 and fragment.headers["hx-redirect"] == "/console/sign-in?next=%2Fconsole"
    )
    form = await console.page("/console/sign-in")
    assert form.status_code == 200 and 'name="totp_code"' in form.text and 'for="totp_code"' in form.text


async def test_sign_in_with_totp_sets_a_strict_http_only_cookie_and_sign_out_revokes_it(
    keyed: Settings, clean_db: Any, redis: Any
) -> None:
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    async with console_client(keyed) as client:
        form = await client.get("/console/sign-in")
        token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
        assert token
        body = {
            "signin_token": token.group(1),
            "next": "/console/audit",
            "email": admin.email,
            "password": admin.password,
            "totp_code": admin.code_now(),
        }
        # A form without the sign-in cookie's token: refused before the password is even checked.
        forged = await client.post("/console/sign-in", data=body | {"signin_token": "x" * 43})
        assert forged.status_code == 403
        fresh = re.search(r'name="signin_token" value="([^"]+)"', forged.text)  # the form, re-issued
        assert fresh
        body["signin_token"] = fresh.group(1)
        signed_in = await client.post("/console/sign-in", data=body)
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/console/audit"
        cookie = signed_in.headers["set-cookie"]
        print("Set-Cookie:", re.sub(r"=[A-Za-z0-9_-]{43}", "=<token>", cookie))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie  # plain HTTP on 127.0.0.1 only
        session_token = client.cookies[SESSION_COOKIE]
        audit_page = await client.get("/console/audit")
        assert audit_page.status_code == 200 and "auth.login" in audit_page.text
        # The same code again, from a second browser: the replay guard refuses it.
        client.cookies.clear()
        other = await client.get("/console/sign-in")
        replay_token = re.search(r'name="signin_token" value="([^"]+)"', other.text)
        assert replay_token
        replay = await client.post("/console/sign-in", data=body | {"signin_token": replay_token.group(1)})
        assert replay.status_code == 401 and "Invalid email, password or code." in replay.text
        client.cookies.set(SESSION_COOKIE, session_token)
        csrf = CSRF.search(audit_page.text)
        assert csrf
        out = await client.post("/console/sign-out", data={"csrf_token": csrf.group(1)})
        assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
        client.cookies.set(SESSION_COOKIE, session_token)  # the old cookie, replayed
        again = await client.get("/console")
        assert again.status_code == 303 and again.headers["location"].startswith("/console/sign-in")
    actions = [r["action"] for r in await clean_db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions.count("auth.login") == 1 and "auth.logout" in actions


async def test_wrong_code_is_one_generic_error(keyed: Settings, clean_db: Any, redis: Any) -> None:
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    async with console_client(keyed) as client:
        form = await client.get("/console/sign-in")
        token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
        assert token
        wrong = str((int(admin.code_now()) + 1) % 1_000_000).zfill(6)
        response = await client.post(
            "/console/sign-in",
            data={
                "signin_token": token.group(1),
                "email": admin.email,
                "password": admin.password,
                "totp_code": wrong,
            },
        )
        assert response.status_code == 401 and "Invalid email, password or code." in response.text
        assert SESSION_COOKIE not in client.cookies
        token = re.search(r'name="signin_token" value="([^"]+)"', response.text)
        assert token
        huge = await client.post(
            "/console/sign-in",
            data={
                "signin_token": token.group(1),
                "email": admin.email,
                "password": "x" * 5000,
                "totp_code": "1",
            },
        )
        assert huge.status_code == 400 and "too long" in huge.text


@pytest.mark.parametrize(
    ("base_url", "insecure_allowed"),
    [("http://console.example.test", True), ("http://127.0.0.1:8000", False)],
)
async def test_cookie_is_secure_unless_allowed_and_plain_http_on_loopback(
    keyed: Settings, clean_db: Any, redis: Any, base_url: str, insecure_allowed: bool
) -> None:
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    settings = dataclasses.replace(keyed, console_insecure_cookies=insecure_allowed)
    async with console_client(settings, base_url=base_url) as client:
        form = await client.get("/console/sign-in")
        assert "Secure" in form.headers["set-cookie"]
        token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
        assert token
        client.cookies.set("fmhl_console_signin", form.cookies["fmhl_console_signin"])
        response = await client.post(
            "/console/sign-in",
            data={
                "signin_token": token.group(1),
                "email": admin.email,
                "password": admin.password,
                "totp_code": admin.code_now(),
            },
        )
        assert response.status_code == 303, response.text[:300]
        assert "Secure" in response.headers["set-cookie"]


async def test_post_without_a_valid_csrf_token_is_403_and_changes_nothing(console: Console) -> None:
    entry_id = await create_dlq_entry(console.db)
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
        response = await console.client.post(f"/console/dlq/{entry_id}/resolve", data=data)
        assert response.status_code == 403 and "CSRF" in response.text
    assert (
        await console.db.fetchval("SELECT resolved_at FROM dead_letter_queue WHERE id = $1", entry_id) is None
    )
    csrf = await console.csrf()
    done = await console.client.post(
        f"/console/dlq/{entry_id}/resolve", data={"csrf_token": csrf, "note": "dup"}
    )
    assert done.status_code == 303
    row = await console.db.fetchrow(
        "SELECT resolution, resolution_note FROM dead_letter_queue WHERE id = $1", entry_id
    )
    assert dict(row) == {"resolution": "manual", "resolution_note": "dup"}
    page = await console.page(done.headers["location"])
    assert "Entry resolved." in page.text and "dlq.resolve" in page.text  # notice + audit history
    again = await console.client.post(f"/console/dlq/{entry_id}/resolve", data={"csrf_token": csrf})
    assert again.status_code == 409
    broken = await console.client.post(
        f"/console/dlq/{entry_id}/resolve",
        content=b"--x\r\nnot a part",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert broken.status_code in (400, 403) and "Traceback" not in broken.text


async def test_support_sees_every_page_without_action_controls_and_a_forged_post_is_403(
    console: Console,
) -> None:
    assert console.settings.mfa_encryption_key
    support = await create_admin(
        console.db, mfa_encryption_key=console.settings.mfa_encryption_key, role="support"
    )
    console.client.cookies.set(SESSION_COOKIE, await create_admin_session(console.db, support.user_id))
    entry_id = await create_dlq_entry(console.db)
    for path in (*PAGES, f"/console/dlq/{entry_id}", "/console/groups/email_send/fp-test/retry"):
        response = await console.page(path)
        assert response.status_code == 200, path
        html = response.text
        forms = re.findall(r'<form method="post" action="([^"]+)"', html)
        assert forms == ([] if path == "/console/live" else ["/console/sign-out"]), (path, forms)
        assert "Retry all" not in html and "Run now" not in html
    csrf = await console.csrf()  # support's own, valid token: the role refuses, not CSRF
    for path in (
        f"/console/dlq/{entry_id}/retry",
        f"/console/dlq/{entry_id}/resolve",
        "/console/groups/email_send/fp-test/resolve",
        f"/console/redrives/{uuid.uuid4()}/cancel",
        "/console/cron/cleanup_dlq/run",
    ):
        response = await console.client.post(path, data={"csrf_token": csrf})
        assert response.status_code == 403 and "can view but not change" in response.text, path
    assert (
        await console.db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE resolved_at IS NOT NULL") == 0
    )
    assert await console.redis.zcard(SCHEDULER) == 0


async def test_group_confirmation_counts_then_resolve_and_retry_whole_groups(console: Console) -> None:
    for n in range(3):
        await create_dlq_entry(console.db, fingerprint="fp-a", kwargs={"n": n})
    for n in range(2):
        await create_dlq_entry(console.db, fingerprint="fp-b", kwargs={"n": n})
    groups = (await console.page("/console/groups")).text
    assert "fp-a" in groups and "fp-b" in groups
    confirm = (await console.page("/console/groups/email_send/fp-a/retry")).text
    assert "3 unresolved entries" in confirm
    csrf = await console.csrf()
    retried = await console.client.post(
        "/console/groups/email_send/fp-a/retry", data={"csrf_token": csrf, "note": "smtp is back"}
    )
    # issue 19: "Retry all…" creates a redrive task (default rate) and shows its page
    assert retried.status_code == 303 and retried.headers["location"].startswith("/console/redrives/")
    assert await console.redis.zcard("email_send") == 0
    task_page = (await console.page(retried.headers["location"])).text
    assert "retry all email_send/fp-a" in task_page and "Redrive task created" in task_page
    assert "10.0 jobs/s" in task_page and 'data-testid="remaining">3<' in task_page
    assert "smtp is back" in task_page and ">Pause</button>" in task_page and ">Cancel</button>" in task_page
    task_url = retried.headers["location"].split("?")[0]
    paused = await console.client.post(f"{task_url}/pause", data={"csrf_token": csrf})
    assert (
        paused.status_code == 303 and "Task paused." in (await console.page(paused.headers["location"])).text
    )
    assert ">Resume</button>" in (await console.page(f"{task_url}/progress")).text
    assert "retry all email_send/fp-a" in (await console.page("/console/redrives")).text
    resolved = await console.client.post(
        "/console/groups/email_send/fp-b/resolve", data={"csrf_token": csrf, "note": "known noise"}
    )
    assert resolved.status_code == 303 and "count=2" in resolved.headers["location"]
    assert "2 entries resolved." in (await console.page(resolved.headers["location"])).text
    assert await console.db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE resolved_at IS NULL") == 3
    actions = await console.db.fetch("SELECT action, count(*) AS n FROM audit_log GROUP BY action")
    counts = {r["action"]: r["n"] for r in actions}
    assert counts["redrive.create"] == 1 and counts["redrive.pause"] == 1 and counts["dlq.resolve"] == 2
    assert counts["dlq.bulk_resolve"] == 1 and "dlq.retry" not in counts
    assert (await console.client.get("/console/groups/email_send/fp-a/explode")).status_code == 404


async def test_entry_lineage_both_ways_and_audit_history(console: Console) -> None:
    first = await create_dlq_entry(console.db, resolved_at=time_now(), resolution="retried")
    second = await create_dlq_entry(console.db, retry_of=first, resolved_at=time_now(), resolution="retried")
    third = await create_dlq_entry(console.db, retry_of=second)
    page = (await console.page(f"/console/dlq/{second}")).text
    assert f"/console/dlq/{first}" in page and f"/console/dlq/{third}" in page
    assert "retried from" in page and "failed again as" in page
    top = (await console.page(f"/console/dlq/{third}")).text
    assert top.index(f"/console/dlq/{first}") < top.index(f"/console/dlq/{second}")
    assert (await console.client.get("/console/dlq/not-a-uuid")).status_code == 400
    assert (await console.client.get(f"/console/dlq/{uuid.uuid4()}")).status_code == 404


async def test_dlq_list_filters_and_keyset_pages(console: Console) -> None:
    for n in range(60):
        await create_dlq_entry(console.db, error_message=f"boom number {n}")
    first = (await console.page("/console/dlq")).text
    assert first.count('href="/console/dlq/') == 50
    older = re.search(r'rel="next" href="([^"]+)"', first)
    assert older
    second = (await console.page(older.group(1).replace("&amp;", "&"))).text
    assert second.count('href="/console/dlq/') == 10
    assert (await console.client.get("/console/dlq?queue=nope")).status_code == 400
    assert (await console.client.get("/console/dlq?cursor=forged")).status_code == 400
    found = (await console.page("/console/dlq?q=boom&state=all")).text
    assert found.count('href="/console/dlq/') == 50


async def test_cron_run_now_enqueues_on_the_scheduler_and_is_audited(console: Console) -> None:
    page = (await console.page("/console/cron")).text
    for name in CRON_JOB_NAMES:
        assert name in page
    csrf = await console.csrf()
    response = await console.client.post("/console/cron/cleanup_dlq/run", data={"csrf_token": csrf})
    assert response.status_code == 303
    jobs = await console.redis.zrange(SCHEDULER, 0, -1)
    assert len(jobs) == 1 and jobs[0].decode().startswith("manual:cleanup_dlq:")
    row = await console.db.fetchrow(
        "SELECT actor, metadata FROM audit_log WHERE action = 'cron.run_requested'"
    )
    assert row["actor"] == console.admin.email and row["metadata"]["job_id"] == jobs[0].decode()
    assert (
        await console.client.post("/console/cron/rm_rf/run", data={"csrf_token": csrf})
    ).status_code == 400


async def test_redis_down_pages_name_redis_with_the_readiness_detail(keyed: Settings, clean_db: Any) -> None:
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    entry_id = await create_dlq_entry(clean_db)
    broken = dataclasses.replace(
        keyed, redis_url=f"redis://127.0.0.1:{closed_port()}/0", health_check_timeout_seconds=0.5
    )
    async with console_client(broken) as client:
        client.cookies.set(SESSION_COOKIE, token)
        overview = await client.get("/console")
        assert overview.status_code == 503
        assert "Redis unavailable" in overview.text and "redis:responseTime" in overview.text
        assert "Traceback" not in overview.text and 'File "' not in overview.text
        live = await client.get("/console/live")
        assert live.status_code == 200 and "Redis unavailable" in live.text
        # Pages that need only Postgres keep working; an action that needs Redis says so.
        assert (await client.get("/console/groups")).status_code == 200
        csrf = CSRF.search((await client.get("/console/groups")).text)
        assert csrf
        retry = await client.post(f"/console/dlq/{entry_id}/retry", data={"csrf_token": csrf.group(1)})
        assert retry.status_code == 503 and "Redis unavailable" in retry.text
    assert (
        await clean_db.fetchval("SELECT resolved_at FROM dead_letter_queue WHERE id = $1", entry_id) is None
    )


async def test_postgres_down_pages_name_postgres(keyed: Settings, redis: Any) -> None:
    broken = dataclasses.replace(
        keyed,
        database_url=f"postgresql://nobody:x@127.0.0.1:{closed_port()}/none",
        health_check_timeout_seconds=0.5,
    )
    async with console_client(broken, wait_for_db=False) as client:
        client.cookies.set(SESSION_COOKIE, "a" * 43)
        for path in ("/console", "/console/dlq"):
            response = await client.get(path)
            assert response.status_code == 503, response.text[:300]
            assert "Postgres unavailable" in response.text and "postgres:responseTime" in response.text
        sign_in = await client.get("/console/sign-in")
        assert sign_in.status_code == 200  # the form still renders; submitting it says Postgres is down


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_failure_groups_page_by_size(console: Console) -> None:
    await console.db.execute(
        """INSERT INTO dead_letter_queue (queue_name, job_id, function, error_type, error_message,
               fingerprint, attempts, reason, failed_at)
           SELECT 'email_send', 'job-' || g || '-' || n, 'send_email', 'E' || g, 'message ' || g,
                  'fp-' || lpad(g::text, 3, '0'), 1, 'permanent', now()
           FROM generate_series(1, 105) AS g, generate_series(1, 1 + g / 50) AS n"""
    )
    first = (await console.page("/console/groups")).text
    assert first.count('class="fp"') == 100 and "fp-105" in first  # the largest (3 entries) first
    nxt = re.search(r'rel="next" href="([^"]+)"', first)
    assert nxt
    second = (await console.page(nxt.group(1).replace("&amp;", "&"))).text
    assert second.count('class="fp"') == 5 and "« Larger" in second and 'rel="next"' not in second
    assert (await console.client.get("/console/groups?page=0")).status_code == 400

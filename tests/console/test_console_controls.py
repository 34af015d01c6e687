"""The console's incident controls over HTTP, in-process: the overview's pause state and control,
the live jobs page (state tabs, keyset "next"), a job's page, the confirmations and the actions
(pause/resume, cancel, abort, run now, bulk cancel), CSRF, and the support role (pages yes,
controls no, a forged POST 403). The real-browser run is ``tests/console/test_console_browser.py``.
"""

from __future__ import annotations

import dataclasses
import html
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from service.console.security import SESSION_COOKIE
from shared.controls.pause import pause_queue
from shared.infra.config import Settings
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import Heartbeat, write_heartbeat
from shared.jobs.queues import DISTRIBUTE_LEAD, EMAIL_SEND
from shared.jobs.retry_trace import record_retry
from tests.console.test_console_http import console_client
from tests.factories import create_admin, create_admin_session

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
JOBS = f"/console/queues/{EMAIL_SEND}/jobs"


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, mfa_encryption_key=Fernet.generate_key().decode(), console_insecure_cookies=True
    )


async def _signed_in(keyed: Settings, pool: Any, role: str) -> tuple[str, str]:
    assert keyed.mfa_encryption_key
    user = await create_admin(pool, mfa_encryption_key=keyed.mfa_encryption_key, role=role)
    return await create_admin_session(pool, user.user_id), user.email


@pytest.fixture
async def admin(keyed: Settings, clean_db: Any, redis: Any) -> AsyncIterator[httpx.AsyncClient]:
    token, _ = await _signed_in(keyed, clean_db, "admin")
    async with console_client(keyed) as client:
        client.cookies.set(SESSION_COOKIE, token)
        yield client


async def _page(client: httpx.AsyncClient, path: str, status: int = 200) -> str:
    response = await client.get(path)
    assert response.status_code == status, (path, response.text[:500])
    assert " on" + "click=" not in response.text and "<script>" not in response.text  # CSP: no inline
    return html.unescape(response.text)


async def _post(client: httpx.AsyncClient, path: str, **form: str) -> httpx.Response:
    token = CSRF.search((await client.get("/console")).text)
    assert token
    return await client.post(path, data={"csrf_token": token.group(1), **form})


async def _fake_running(redis: Any, job_id: str) -> None:
    await redis.set(f"arq:in-progress:{job_id}", b"1", px=60_000)
    await redis.set(f"arq:retry:{job_id}", 1)
    beat = Heartbeat(EMAIL_SEND, "w-busy", "host-a", 1, time.time(), ((job_id, time.time() - 3),))
    await write_heartbeat(redis, beat)


async def _seed(redis: Any) -> dict[str, str]:
    ids = {
        "queued": await enqueue(redis, "send_email", correlation_id="corr-1", to="q@x.test"),
        "scheduled": await enqueue(redis, "send_email", defer_by_seconds=600, to="s@x.test"),
        "retrying": await enqueue(redis, "send_email", defer_by_seconds=60, to="r@x.test"),
        "running": await enqueue(redis, "send_email", to="busy@x.test"),
    }
    await redis.set(f"arq:retry:{ids['retrying']}", 2)
    await record_retry(
        redis, queue=EMAIL_SEND, job_id=str(ids["retrying"]), job_try=2, max_tries=6, delay_seconds=60,
        error_type="SMTPResponseException", error_message="451 4.7.0 try again later",
    )  # fmt: skip
    await _fake_running(redis, str(ids["running"]))
    return {state: str(job_id) for state, job_id in ids.items()}


async def test_live_jobs_tabs_columns_detail_and_keyset_next(admin: httpx.AsyncClient, redis: Any) -> None:
    ids = await _seed(redis)
    queued = await _page(admin, JOBS)
    assert ids["queued"][:12] in queued and "corr-1" in queued and '"to":"q@x.test"' in queued
    assert "0 of 6" in queued and ids["scheduled"][:12] not in queued
    assert f'href="{JOBS}/{ids["queued"]}/cancel"' in queued and "Bulk cancel…" in queued
    retrying = await _page(admin, f"{JOBS}?state=retrying")
    assert (
        ids["retrying"][:12] in retrying and "2 of 6" in retrying and "451 4.7.0 try again later" in retrying
    )
    assert f'href="{JOBS}/{ids["retrying"]}/run-now"' in retrying
    running = await _page(admin, f"{JOBS}?state=running")
    assert ids["running"][:12] in running and "w-busy" in running
    assert f'href="{JOBS}/{ids["running"]}/abort"' in running and "/cancel" not in running.split("<tbody>")[1]
    scheduled = await _page(admin, f"{JOBS}?state=scheduled")
    assert ids["scheduled"][:12] in scheduled
    detail = await _page(admin, f"{JOBS}/{ids['retrying']}")
    assert "SMTPResponseException" in detail and "r@x.test" in detail and "Run now…" in detail
    await _page(admin, f"{JOBS}/gone", status=404)
    await _page(admin, f"{JOBS}?state=failed", status=400)
    await _page(admin, "/console/queues/scheduler/jobs", status=400)

    many = [await enqueue(redis, "send_email", to=f"m{n}@x.test") for n in range(60)]
    first = await _page(admin, JOBS)
    match = re.search(r'rel="next" href="([^"]+)"', first)
    assert match, "a full page links to the next one"
    second = await _page(admin, match.group(1))
    shown = {
        job_id
        for job_id in [*many, ids["queued"]]
        if job_id and (job_id[:12] in first or job_id[:12] in second)
    }
    assert len(shown) == 61 and 'rel="next"' not in second and "« First" in second


async def test_pause_from_the_overview_then_resume(
    admin: httpx.AsyncClient, clean_db: Any, redis: Any
) -> None:
    overview = await _page(admin, "/console")
    assert f'href="/console/queues/{EMAIL_SEND}/pause"' in overview
    confirm = await _page(admin, f"/console/queues/{EMAIL_SEND}/pause")
    assert "stops starting jobs" in confirm.replace("<strong>", "").replace("</strong>", "")
    assert 'name="reason"' in confirm and "required" in confirm
    blank = await _post(admin, f"/console/queues/{EMAIL_SEND}/pause", reason="  ")
    assert blank.status_code == 400 and "reason is required" in blank.text
    done = await _post(admin, f"/console/queues/{EMAIL_SEND}/pause", reason="SMTP provider down")
    assert done.status_code == 303 and done.headers["location"] == "/console?done=paused"
    again = await _post(admin, f"/console/queues/{EMAIL_SEND}/pause", reason="twice")
    assert again.status_code == 409 and "already paused" in again.text
    shown = await _page(admin, "/console?done=paused")
    assert "Queue paused" in shown and "SMTP provider down" in shown and "Resume…" in shown
    assert "Paused by" in await _page(admin, JOBS)
    resumed = await _post(admin, f"/console/queues/{EMAIL_SEND}/resume", reason="")
    assert resumed.status_code == 303 and await redis.get(f"fmhl:queue:paused:{EMAIL_SEND}") is None
    scheduler = await _post(admin, "/console/queues/scheduler/pause", reason="no")
    assert scheduler.status_code == 400 and "cannot be paused" in scheduler.text
    rows = await clean_db.fetch(
        "SELECT action, metadata FROM audit_log WHERE target_type = 'queue' ORDER BY id"
    )
    assert [r["action"] for r in rows] == ["queue.pause", "queue.resume"]


async def test_cancel_abort_run_now_and_a_second_click_is_409(
    admin: httpx.AsyncClient, clean_db: Any, redis: Any
) -> None:
    ids = await _seed(redis)
    confirm = await _page(admin, f"{JOBS}/{ids['scheduled']}/cancel")
    assert "dead letters as cancelled" in confirm.replace("<strong>", "").replace("</strong>", "")
    cancel = await _post(admin, f"{JOBS}/{ids['scheduled']}/cancel", reason="not needed", state="scheduled")
    assert cancel.status_code == 303 and "done=job_cancelled" in cancel.headers["location"]
    assert "state=scheduled" in cancel.headers["location"]
    twice = await _post(admin, f"{JOBS}/{ids['scheduled']}/cancel", reason="again")
    assert twice.status_code == 409 and "already cancelled" in twice.text
    run = await _post(admin, f"{JOBS}/{ids['retrying']}/run-now")
    assert run.status_code == 303 and "done=run_now" in run.headers["location"]
    assert (await _post(admin, f"{JOBS}/{ids['retrying']}/run-now")).status_code == 409
    abort = await _post(admin, f"{JOBS}/{ids['running']}/abort", reason="stuck")
    assert abort.status_code == 303 and "state=running" in abort.headers["location"]
    assert (await _post(admin, f"{JOBS}/{ids['running']}/abort")).status_code == 409
    wrong = await _page(admin, f"{JOBS}/{ids['queued']}/abort")
    assert "applies to running jobs" in wrong and 'method="post"' not in wrong.split("<main")[1]
    (row,) = await clean_db.fetch("SELECT * FROM dead_letter_queue WHERE job_id = $1", ids["scheduled"])
    assert row["reason"] == "cancelled" and row["resolution_note"] == "not needed"
    actions = [r["action"] for r in await clean_db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["job.cancel", "job.run_now", "job.abort"]


async def test_bulk_cancel_confirmation_counts_then_cancels_at_most_that(
    admin: httpx.AsyncClient, clean_db: Any, redis: Any
) -> None:
    for n in range(3):
        await enqueue(redis, "distribute_lead", lead_id=f"L-{n}")
    await redis.enqueue_job("refund_bad_lead", _queue_name=DISTRIBUTE_LEAD)
    base = f"/console/queues/{DISTRIBUTE_LEAD}"
    confirm = await _page(admin, f"{base}/cancel?function=distribute_lead")
    assert "3 queued, scheduled or retrying jobs" in confirm and 'name="confirm" value="3"' in confirm
    await enqueue(redis, "distribute_lead", lead_id="late")  # after the confirmation: not taken
    done = await _post(admin, f"{base}/cancel", function="distribute_lead", confirm="3", reason="bad batch")
    assert done.status_code == 303 and "count=3" in done.headers["location"]
    assert "3 jobs cancelled" in await _page(admin, done.headers["location"])
    assert await redis.zcard(DISTRIBUTE_LEAD) == 2  # the late one and the refund
    missing = await _post(admin, f"{base}/cancel", function="distribute_lead", reason="x")
    assert missing.status_code == 400
    await _page(admin, f"{base}/cancel?function=nope", status=400)


async def test_support_sees_the_pages_without_controls_and_a_forged_post_is_403(
    keyed: Settings, clean_db: Any, redis: Any
) -> None:
    ids = await _seed(redis)
    async with clean_db.acquire() as conn:
        await pause_queue(conn, redis, queue=EMAIL_SEND, actor="ops@x.test", reason="outage")
    token, _ = await _signed_in(keyed, clean_db, "support")
    async with console_client(keyed) as client:
        client.cookies.set(SESSION_COOKIE, token)
        overview = await _page(client, "/console")
        assert "outage" in overview and "Resume…" not in overview and "Pause…" not in overview
        for state in ("queued", "scheduled", "retrying", "running"):
            page = await _page(client, f"{JOBS}?state={state}")
            assert ids[state][:12] in page and "Cancel…" not in page and "Abort…" not in page
            assert "Bulk cancel" not in page
        detail = await _page(client, f"{JOBS}/{ids['scheduled']}")
        assert "can view but not act" in detail
        confirm = await _page(client, f"{JOBS}/{ids['scheduled']}/cancel")
        assert 'method="post"' not in confirm.split("<main")[1]
        forged = [
            await _post(client, f"{JOBS}/{ids['scheduled']}/cancel"),
            await _post(client, f"{JOBS}/{ids['running']}/abort"),
            await _post(client, f"{JOBS}/{ids['retrying']}/run-now"),
            await _post(client, f"/console/queues/{EMAIL_SEND}/resume"),
            await _post(client, f"/console/queues/{DISTRIBUTE_LEAD}/pause", reason="x"),
            await _post(client, f"/console/queues/{EMAIL_SEND}/cancel", function="send_email", confirm="9"),
        ]  # fmt: skip
        assert [r.status_code for r in forged] == [403] * 6
        no_csrf = await client.post(f"{JOBS}/{ids['scheduled']}/cancel", data={})
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    assert await redis.zscore(EMAIL_SEND, ids["scheduled"]) is not None
    assert await redis.get(f"fmhl:queue:paused:{EMAIL_SEND}") is not None
    assert [r["action"] for r in await clean_db.fetch("SELECT action FROM audit_log")] == ["queue.pause"]


async def test_admin_post_without_csrf_is_403(admin: httpx.AsyncClient, redis: Any) -> None:
    job_id = await enqueue(redis, "send_email", to="a@x.test")
    response = await admin.post(f"{JOBS}/{job_id}/cancel", data={"csrf_token": "forged"})
    assert response.status_code == 403
    assert await redis.zscore(EMAIL_SEND, str(job_id)) is not None

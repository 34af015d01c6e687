"""Incident controls over HTTP: pause/resume (``service/routes/queue_controls.py``), live jobs and
the actions on them (``service/routes/live_jobs.py``).

Every action is exactly once under concurrent double submits (two requests at once: one 2xx,
one 409), audited (actor, reason, target, ip, request id), admin only (support: 403, nothing
changed) and refuses bad input with a 400 in the JSON error shape. The app runs in-process and
commits, so tests use ``clean_db``; Redis is the flushed test db.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from shared.infra.config import Settings
from shared.jobs.enqueue import enqueue
from shared.jobs.heartbeat import Heartbeat, write_heartbeat
from shared.jobs.queues import DISTRIBUTE_LEAD, EMAIL_SEND
from shared.jobs.retry_trace import record_retry
from tests.factories import create_admin, create_admin_session
from tests.helpers import running_app

QUEUES = "/api/v1/admin/queues"
JOBS = f"{QUEUES}/{EMAIL_SEND}/jobs"
BULK = {"function": "send_email", "reason": "x", "confirm": True}
CLIENT_IP = "203.0.113.7"  # tests.helpers.running_app's client address


@pytest.fixture
def settings_with_key(settings: Settings) -> Settings:
    return dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())


async def _headers(pool: Any, settings: Settings, role: str = "admin") -> tuple[dict[str, str], str]:
    assert settings.mfa_encryption_key
    user = await create_admin(pool, mfa_encryption_key=settings.mfa_encryption_key, role=role)
    token = await create_admin_session(pool, user.user_id)
    return {"Authorization": f"Bearer {token}"}, user.email


async def _audit(pool: Any, action: str) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM audit_log WHERE action = $1 ORDER BY id", action)
    return [dict(row) for row in rows]


def _statuses(*responses: httpx.Response) -> list[int]:
    return sorted(response.status_code for response in responses)


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]


async def _fake_running(redis: Any, job_id: str, worker_id: str = "w-1") -> None:
    """A job a worker took: arq's in-progress flag plus the worker's heartbeat listing it."""
    await redis.set(f"arq:in-progress:{job_id}", b"1", px=60_000)
    await redis.set(f"arq:retry:{job_id}", 1)
    beat = Heartbeat(EMAIL_SEND, worker_id, "host-a", 1, time.time(), ((job_id, time.time() - 3),))
    await write_heartbeat(redis, beat)


async def _retrying(redis: Any, to: str) -> str:
    """A job whose first try failed and that waits 120 s for the next (as the worker leaves it)."""
    job_id = await enqueue(redis, "send_email", defer_by_seconds=120, to=to)
    assert job_id is not None
    await redis.set(f"arq:retry:{job_id}", 1)
    await record_retry(
        redis, queue=EMAIL_SEND, job_id=job_id, job_try=1, max_tries=6, delay_seconds=120,
        error_type="SMTPResponseException", error_message="451 try again later",
    )  # fmt: skip
    return job_id


async def test_pause_and_resume_are_exactly_once_audited_and_shown(
    settings_with_key: Settings, clean_db: Any, redis: Any
) -> None:
    headers, email = await _headers(clean_db, settings_with_key)
    pause = f"{QUEUES}/{EMAIL_SEND}/pause"
    async with running_app(settings_with_key) as (_, client):
        first, second = await asyncio.gather(
            client.post(pause, json={"reason": "SMTP outage"}, headers=headers),
            client.post(pause, json={"reason": "SMTP outage"}, headers=headers),
        )
        listed = await client.get(QUEUES, headers=headers)
        again = await client.post(pause, json={"reason": "again"}, headers=headers)
        resumes = await asyncio.gather(
            client.post(f"{QUEUES}/{EMAIL_SEND}/resume", json={"reason": "provider back"}, headers=headers),
            client.post(f"{QUEUES}/{EMAIL_SEND}/resume", headers=headers),
        )
        after = await client.get(QUEUES, headers=headers)
    assert _statuses(first, second) == [200, 409]
    won = first if first.status_code == 200 else second
    lost = second if won is first else first
    _error(lost, 409, "already_paused")
    _error(again, 409, "already_paused")
    body = won.json()
    assert body["queue"] == EMAIL_SEND and body["paused"]["by"] == email
    assert body["paused"]["reason"] == "SMTP outage"
    shown = {q["name"]: q["paused"] for q in listed.json()["queues"]}
    assert shown[EMAIL_SEND] == body["paused"] and shown[DISTRIBUTE_LEAD] is None

    assert _statuses(*resumes) == [200, 409]
    resumed = next(r for r in resumes if r.status_code == 200).json()
    assert resumed["ended"] == body["paused"] and resumed["resumed_by"] == email
    _error(next(r for r in resumes if r.status_code == 409), 409, "not_paused")
    assert all(q["paused"] is None for q in after.json()["queues"])

    (row,) = await _audit(clean_db, "queue.pause")  # the refused pauses left no row
    assert (row["actor"], row["target_type"], row["target_id"]) == (email, "queue", EMAIL_SEND)
    assert row["metadata"]["reason"] == "SMTP outage" and row["ip"] == CLIENT_IP
    assert row["request_id"] and row["request_id"] in (
        first.headers["x-request-id"],
        second.headers["x-request-id"],
    )
    (resume_row,) = await _audit(clean_db, "queue.resume")
    assert resume_row["actor"] == email and resume_row["metadata"]["paused_by"] == email


async def test_live_jobs_by_state_and_detail(settings_with_key: Settings, clean_db: Any, redis: Any) -> None:
    headers, _ = await _headers(clean_db, settings_with_key)
    queued = [
        await enqueue(redis, "send_email", correlation_id=f"c-{n}", to=f"u{n}@x.test") for n in range(3)
    ]
    scheduled = await enqueue(redis, "send_email", defer_by_seconds=600, to="later@x.test")
    retrying = await _retrying(redis, "retry@x.test")
    running = await enqueue(redis, "send_email", to="busy@x.test")
    assert running is not None and scheduled is not None
    await _fake_running(redis, running)
    async with running_app(settings_with_key) as (_, client):
        pages = {
            state: (await client.get(JOBS, params={"state": state}, headers=headers)).json()
            for state in ("queued", "scheduled", "retrying", "running")
        }
        first = await client.get(JOBS, params={"limit": 2}, headers=headers)
        rest = await client.get(
            JOBS, params={"limit": 2, "cursor": first.json()["next_cursor"]}, headers=headers
        )
        detail = await client.get(f"{JOBS}/{retrying}", headers=headers)
        missing = await client.get(f"{JOBS}/no-such-job", headers=headers)
        elsewhere = await client.get(f"{QUEUES}/{DISTRIBUTE_LEAD}/jobs/{running}", headers=headers)
    assert sorted(item["job_id"] for item in pages["queued"]["items"]) == sorted(queued)
    item = next(i for i in pages["queued"]["items"] if i["job_id"] == queued[0])
    assert (item["state"], item["function"], item["correlation_id"], item["tries"], item["max_tries"]) == (
        "queued", "send_email", "c-0", 0, 6,
    )  # fmt: skip
    assert item["args_preview"] == '{"args":[],"kwargs":{"to":"u0@x.test"}}'
    assert datetime.fromisoformat(item["enqueued_at"]) <= datetime.now(UTC)
    assert [i["job_id"] for i in pages["scheduled"]["items"]] == [scheduled]
    (retry_item,) = pages["retrying"]["items"]
    assert retry_item["job_id"] == retrying and retry_item["tries"] == 1 and retry_item["max_tries"] == 6
    assert retry_item["last_error"]["error_message"] == "451 try again later"
    assert datetime.fromisoformat(retry_item["next_attempt_at"]) > datetime.now(UTC)
    (busy,) = pages["running"]["items"]
    assert (busy["job_id"], busy["worker_id"], busy["state"]) == (running, "w-1", "running")
    assert busy["started_at"] is not None
    assert len(first.json()["items"]) == 2 and first.json()["next_cursor"]
    seen = [i["job_id"] for i in first.json()["items"] + rest.json()["items"]]
    assert sorted(seen) == sorted(queued) and rest.json()["next_cursor"] is None
    assert detail.status_code == 200 and detail.json()["state"] == "retrying"
    _error(missing, 404, "job_not_found")
    _error(elsewhere, 404, "job_not_found")


async def test_cancel_double_submit_one_wins_recorded_and_audited(
    settings_with_key: Settings, clean_db: Any, redis: Any
) -> None:
    headers, email = await _headers(clean_db, settings_with_key)
    job_id = await enqueue(redis, "send_email", correlation_id="c-cancel", to="a@x.test")
    url = f"{JOBS}/{job_id}/cancel"
    async with running_app(settings_with_key) as (_, client):
        responses = await asyncio.gather(
            client.post(url, json={"reason": "duplicate send"}, headers=headers),
            client.post(url, json={"reason": "duplicate send"}, headers=headers),
        )
        later = await client.get(f"{JOBS}/{job_id}", headers=headers)
    assert _statuses(*responses) == [200, 409]
    won = next(r for r in responses if r.status_code == 200).json()
    assert (won["job_id"], won["action"], won["by"], won["reason"]) == (
        job_id,
        "cancelled",
        email,
        "duplicate send",
    )
    _error(next(r for r in responses if r.status_code == 409), 409, "already_ended")
    _error(later, 404, "job_not_found")
    assert await redis.zscore(EMAIL_SEND, job_id) is None
    (row,) = await clean_db.fetch("SELECT * FROM dead_letter_queue WHERE job_id = $1", job_id)
    assert row["reason"] == "cancelled" and row["resolved_by"] == email and str(row["id"]) == won["dlq_id"]
    assert row["correlation_id"] == "c-cancel" and row["kwargs"] == {"to": "a@x.test"}
    (audit_row,) = await _audit(clean_db, "job.cancel")
    assert audit_row["target_id"] == f"{EMAIL_SEND}:{job_id}" and audit_row["ip"] == CLIENT_IP
    assert audit_row["metadata"] == {"reason": "duplicate send"} and audit_row["request_id"]


async def test_run_now_and_abort_double_submits_one_wins(
    settings_with_key: Settings, clean_db: Any, redis: Any
) -> None:
    headers, _ = await _headers(clean_db, settings_with_key)
    retrying = await _retrying(redis, "r@x.test")
    running = await enqueue(redis, "send_email", to="busy@x.test")
    assert running is not None
    await _fake_running(redis, running)
    async with running_app(settings_with_key) as (_, client):
        run_now = await asyncio.gather(
            *(client.post(f"{JOBS}/{retrying}/run-now", headers=headers) for _ in range(2))
        )
        aborts = await asyncio.gather(
            *(
                client.post(f"{JOBS}/{running}/abort", json={"reason": "stuck"}, headers=headers)
                for _ in range(2)
            )
        )
        cancel_running = await client.post(f"{JOBS}/{running}/cancel", headers=headers)
        abort_waiting = await client.post(f"{JOBS}/{retrying}/abort", headers=headers)
        run_missing = await client.post(f"{JOBS}/nope/run-now", headers=headers)
    assert _statuses(*run_now) == [200, 409]
    _error(next(r for r in run_now if r.status_code == 409), 409, "already_due")
    score = await redis.zscore(EMAIL_SEND, retrying)
    assert score is not None and score <= time.time() * 1000
    assert _statuses(*aborts) == [202, 409]
    assert next(r for r in aborts if r.status_code == 202).json()["action"] == "abort_requested"
    _error(next(r for r in aborts if r.status_code == 409), 409, "already_aborting")
    assert await redis.zscore("arq:abort", running) is not None
    _error(cancel_running, 409, "job_running")
    _error(abort_waiting, 409, "job_not_running")
    _error(run_missing, 404, "job_not_found")
    assert len(await _audit(clean_db, "job.run_now")) == 1 and len(await _audit(clean_db, "job.abort")) == 1


async def test_bulk_cancel_confirms_a_count_and_takes_only_that_function(
    settings_with_key: Settings, clean_db: Any, redis: Any
) -> None:
    headers, email = await _headers(clean_db, settings_with_key)
    leads = [await enqueue(redis, "distribute_lead", lead_id=f"L-{n}") for n in range(3)]
    refund = await redis.enqueue_job("refund_bad_lead", _queue_name=DISTRIBUTE_LEAD)
    base = f"{QUEUES}/{DISTRIBUTE_LEAD}/jobs"
    body = {"function": "distribute_lead", "reason": "bad batch"}
    async with running_app(settings_with_key) as (_, client):
        count = await client.get(f"{base}/count", params={"function": "distribute_lead"}, headers=headers)
        two = await client.post(f"{base}/cancel", json={**body, "confirm": 2}, headers=headers)
        rest = await client.post(f"{base}/cancel", json={**body, "confirm": True}, headers=headers)
        unconfirmed = await client.post(f"{base}/cancel", json={**body, "confirm": False}, headers=headers)
        zero = await client.post(f"{base}/cancel", json={**body, "confirm": 0}, headers=headers)
        unknown = await client.post(
            f"{base}/cancel", json={**body, "function": "nope", "confirm": 1}, headers=headers
        )
        no_reason = await client.post(
            f"{base}/cancel", json={"function": "distribute_lead", "confirm": 1}, headers=headers
        )
    assert count.json() == {
        "queue": DISTRIBUTE_LEAD,
        "function": "distribute_lead",
        "count": 3,
        "capped": False,
    }
    assert two.status_code == 200 and two.json()["cancelled"] == 2
    assert rest.status_code == 200 and rest.json()["cancelled"] == 1
    assert sorted(two.json()["job_ids"] + rest.json()["job_ids"]) == sorted(leads)
    assert refund is not None and await redis.zscore(DISTRIBUTE_LEAD, refund.job_id) is not None
    _error(unconfirmed, 400, "not_confirmed")
    _error(zero, 400, "not_confirmed")
    _error(unknown, 400, "unknown_function")
    _error(no_reason, 400, "invalid_request")
    rows = await _audit(clean_db, "job.bulk_cancel")
    assert [r["metadata"]["cancelled"] for r in rows] == [2, 1] and {r["actor"] for r in rows} == {email}
    assert all(r["ip"] == CLIENT_IP for r in await _audit(clean_db, "job.cancel"))
    assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue WHERE reason = 'cancelled'") == 3


async def test_support_is_refused_and_nothing_changes(
    settings_with_key: Settings, clean_db: Any, redis: Any
) -> None:
    headers, _ = await _headers(clean_db, settings_with_key, role="support")
    job_id = await enqueue(redis, "send_email", defer_by_seconds=600, to="a@x.test")
    async with running_app(settings_with_key) as (_, client):
        responses = [
            await client.post(f"{QUEUES}/{EMAIL_SEND}/pause", json={"reason": "x"}, headers=headers),
            await client.post(f"{QUEUES}/{EMAIL_SEND}/resume", headers=headers),
            await client.get(JOBS, headers=headers),
            await client.get(f"{JOBS}/{job_id}", headers=headers),
            await client.post(f"{JOBS}/{job_id}/cancel", headers=headers),
            await client.post(f"{JOBS}/{job_id}/run-now", headers=headers),
            await client.post(f"{JOBS}/{job_id}/abort", headers=headers),
            await client.post(f"{JOBS}/cancel", json=BULK, headers=headers),
        ]  # fmt: skip
        anonymous = await client.post(f"{JOBS}/{job_id}/cancel")
    for response in responses:
        _error(response, 403, "forbidden")
    _error(anonymous, 401, "unauthenticated")
    assert await redis.zscore(EMAIL_SEND, job_id) is not None
    assert await redis.get(f"fmhl:queue:paused:{EMAIL_SEND}") is None
    assert await clean_db.fetchval("SELECT count(*) FROM audit_log") == 0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "code"),
    [
        ("POST", f"{QUEUES}/scheduler/pause", {"json": {"reason": "x"}}, "queue_not_pausable"),
        ("POST", f"{QUEUES}/scheduler/resume", {}, "queue_not_pausable"),
        ("POST", f"{QUEUES}/nope/pause", {"json": {"reason": "x"}}, "invalid_request"),
        ("POST", f"{QUEUES}/{EMAIL_SEND}/pause", {}, "invalid_request"),
        ("POST", f"{QUEUES}/{EMAIL_SEND}/pause", {"json": {"reason": "   "}}, "reason_required"),
        ("POST", f"{QUEUES}/{EMAIL_SEND}/pause", {"json": {"reason": "x" * 501}}, "invalid_request"),
        ("POST", f"{QUEUES}/{EMAIL_SEND}/pause", {"json": {"reason": "x", "by": "me"}}, "invalid_request"),
        ("GET", JOBS, {"params": {"state": "failed"}}, "invalid_request"),
        ("GET", f"{QUEUES}/scheduler/jobs", {}, "invalid_request"),
        ("GET", f"{QUEUES}/nope/jobs", {}, "invalid_request"),
        ("GET", JOBS, {"params": {"cursor": "not-a-cursor"}}, "invalid_cursor"),
        ("GET", JOBS, {"params": {"limit": "0"}}, "invalid_request"),
        ("GET", JOBS, {"params": {"limit": "201"}}, "invalid_request"),
        ("GET", f"{JOBS}/count", {"params": {"function": "distribute_lead"}}, "unknown_function"),
        ("POST", f"{JOBS}/abc/cancel", {"json": {"reason": 5}}, "invalid_request"),
        ("POST", f"{JOBS}/cancel", {"json": {"function": "send_email", "reason": "x"}}, "invalid_request"),
    ],
)
async def test_bad_input_is_a_400(
    settings_with_key: Settings, clean_db: Any, method: str, path: str, kwargs: dict[str, Any], code: str
) -> None:
    headers, _ = await _headers(clean_db, settings_with_key)
    async with running_app(settings_with_key) as (_, client):
        response = await client.request(method, path, headers=headers, **kwargs)
    _error(response, 400, code)

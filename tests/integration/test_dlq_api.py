"""DLQ admin API acceptance: list/detail shapes, keyset walks under inserts, retry exactly once
(single, concurrent, bulk), resolve, retry_of through a real worker, strict validation, audit.

The app runs in-process on its own pool and Redis client and commits, so every test uses
``clean_db`` (truncated tables) and the ``redis`` fixture (flushed db). Sessions come from
``create_admin_session`` (a live, MFA-passed session of a real admin user); login itself is
covered by ``test_auth.py``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from shared.dlq.browse import cursor_secret, encode_cursor
from shared.infra.config import Settings
from shared.jobs.queues import CORRELATION_KWARG, DISTRIBUTE_LEAD, EMAIL_SEND, REPORT_EXPORT, RETRY_OF_KWARG
from tests.factories import bulk_create_dlq_entries, create_admin, create_admin_session, create_dlq_entry
from tests.helpers import assert_error, running_app
from tests.worker_support import job, run_burst

BASE = "/api/v1/admin/queues/dlq"
LIST_FIELDS = {
    "id",
    "queue",
    "job_id",
    "function",
    "error_type",
    "error_message",
    "fingerprint",
    "attempts",
    "reason",
    "enqueued_at",
    "failed_at",
    "correlation_id",
    "resolved",
    "resolved_at",
    "resolved_by",
    "resolution",
    "retry_job_id",
    "retry_of",
    "content_escaped",
}
DETAIL_FIELDS = LIST_FIELDS | {
    "args",
    "kwargs",
    "stack_trace",
    "resolution_note",
    "payload_omitted",
    "raw_preview",
    "trace_id",
}


@dataclasses.dataclass
class Api:
    client: httpx.AsyncClient
    token: str
    email: str
    pool: Any
    redis: Any
    settings: Settings

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return headers

    async def get(self, path: str, params: Any = None, request_id: str | None = None) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.headers(request_id))

    async def post(
        self, path: str, body: Any = None, *, content: bytes | None = None, request_id: str | None = None
    ) -> httpx.Response:
        headers = self.headers(request_id) | {"Content-Type": "application/json"}
        data = content if content is not None else (orjson.dumps(body) if body is not None else b"")
        return await self.client.post(path, content=data, headers=headers)


@pytest.fixture
def settings_with_key(settings: Settings) -> Settings:
    return dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())


@pytest.fixture
async def api(settings_with_key: Settings, clean_db: Any, redis: Any) -> AsyncIterator[Api]:
    assert settings_with_key.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=settings_with_key.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    async with running_app(settings_with_key) as (_, client):
        yield Api(client, token, admin.email, clean_db, redis, settings_with_key)


async def audit_rows(pool: Any, action: str, target_id: str | None = None) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT * FROM audit_log WHERE action = $1 AND ($2::text IS NULL OR target_id = $2) ORDER BY id",
        action,
        target_id,
    )
    return [dict(row) for row in rows]


def parse_time(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- shapes, detail, resolve -------------------------------------------------------------------


async def test_list_and_detail_shapes_match_the_contract(api: Api) -> None:
    failed_at = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    original = await create_dlq_entry(api.pool, failed_at=failed_at - timedelta(minutes=5), attempts=1)
    entry_id = await create_dlq_entry(
        api.pool,
        queue_name=DISTRIBUTE_LEAD,
        function="distribute_lead",
        args=[7, "x"],
        kwargs={"lead_id": "L-9", "nested": {"a": [1, 2]}},
        error_type="ValueError",
        error_message="lead L-9 has no providers",
        stack_trace='Traceback (most recent call last):\n  File "jobs.py", line 3\nValueError',
        fingerprint="fp-shape",
        attempts=3,
        reason="permanent",
        failed_at=failed_at,
        retry_of=original,
    )
    enqueued_at = failed_at - timedelta(seconds=2)
    await api.pool.execute(
        "UPDATE dead_letter_queue SET enqueued_at = $2, correlation_id = 'corr-shape' WHERE id = $1",
        entry_id,
        enqueued_at,
    )

    listing = await api.get(BASE)
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None
    assert [item["id"] for item in body["items"]] == [str(entry_id), str(original)]  # newest first
    for item in body["items"]:
        assert set(item) == LIST_FIELDS, set(item) ^ LIST_FIELDS
    item = body["items"][0]
    assert item == {
        "id": str(entry_id),
        "queue": DISTRIBUTE_LEAD,
        "job_id": item["job_id"],
        "function": "distribute_lead",
        "error_type": "ValueError",
        "error_message": "lead L-9 has no providers",
        "fingerprint": "fp-shape",
        "attempts": 3,
        "reason": "permanent",
        "enqueued_at": "2024-05-01T12:30:13.123456Z",
        "failed_at": "2024-05-01T12:30:15.123456Z",
        "correlation_id": "corr-shape",
        "resolved": False,
        "resolved_at": None,
        "resolved_by": None,
        "resolution": None,
        "retry_job_id": None,
        "retry_of": str(original),
        "content_escaped": False,
    }
    assert item["job_id"].startswith("job-")

    detail = await api.get(f"{BASE}/{entry_id}")
    assert detail.status_code == 200, detail.text
    full = detail.json()
    assert set(full) == DETAIL_FIELDS, set(full) ^ DETAIL_FIELDS
    assert {k: v for k, v in full.items() if k in LIST_FIELDS} == item
    assert full["args"] == [7, "x"]
    assert full["kwargs"] == {"lead_id": "L-9", "nested": {"a": [1, 2]}}
    assert full["stack_trace"].startswith("Traceback") and full["resolution_note"] is None


async def test_detail_malformed_id_is_400_and_unknown_id_is_404(api: Api) -> None:
    for bad in ("not-a-uuid", "123", "0000", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"):
        assert_error(await api.get(f"{BASE}/{bad}"), 400, "invalid_request")
    assert_error(await api.get(f"{BASE}/{uuid.uuid4()}"), 404, "not_found")
    entry_id = await create_dlq_entry(api.pool)
    assert_error(await api.get(f"{BASE}/{entry_id}", params={"verbose": "1"}), 400, "invalid_request")


async def test_resolve_with_note_then_again_is_409_and_retry_of_resolved_is_409(api: Api) -> None:
    entry_id = await create_dlq_entry(api.pool, kwargs={"to": "a@b.c"})
    response = await api.post(
        f"{BASE}/{entry_id}/resolve", {"note": "customer fixed their MX record"}, request_id="req-resolve-1"
    )
    assert response.status_code == 200, response.text
    entry = response.json()
    assert set(entry) == DETAIL_FIELDS
    assert entry["id"] == str(entry_id) and entry["kwargs"] == {"to": "a@b.c"}
    assert entry["resolved"] is True and entry["resolution"] == "manual"
    assert entry["resolved_by"] == api.email and entry["resolution_note"] == "customer fixed their MX record"
    assert entry["retry_job_id"] is None
    assert abs((parse_time(entry["resolved_at"]) - datetime.now(UTC)).total_seconds()) < 10
    assert (await api.get(f"{BASE}/{entry_id}")).json() == entry

    assert_error(await api.post(f"{BASE}/{entry_id}/resolve", {"note": "again"}), 409, "already_resolved")
    assert_error(await api.post(f"{BASE}/{entry_id}/retry"), 409, "already_resolved")
    assert_error(await api.post(f"{BASE}/{uuid.uuid4()}/resolve", {}), 404, "not_found")
    assert_error(await api.post(f"{BASE}/{uuid.uuid4()}/retry"), 404, "not_found")
    assert await api.redis.zcard(EMAIL_SEND) == 0

    # Resolving without a body (or with an empty object) works too; the note stays null.
    other = await create_dlq_entry(api.pool)
    bare = await api.post(f"{BASE}/{other}/resolve")
    assert bare.status_code == 200 and bare.json()["resolution_note"] is None

    (audit,) = await audit_rows(api.pool, "dlq.resolve", str(entry_id))
    assert audit["actor"] == api.email and audit["request_id"] == "req-resolve-1"
    assert audit["target_type"] == "dlq_entry" and audit["metadata"] == {
        "note": "customer fixed their MX record"
    }
    assert str(audit["ip"]) == "203.0.113.7"
    assert len(await audit_rows(api.pool, "dlq.resolve")) == 2  # the 409s wrote nothing
    assert await audit_rows(api.pool, "dlq.retry") == []


# --- retry exactly once --------------------------------------------------------------------------


async def test_fifty_concurrent_retries_of_one_entry_enqueue_exactly_one_job(api: Api) -> None:
    entry_id = await create_dlq_entry(
        api.pool, function="send_email", args=["a@b.c"], kwargs={"template": "welcome"}
    )
    responses = await asyncio.gather(
        *(api.post(f"{BASE}/{entry_id}/retry", request_id=f"req-retry-{n}") for n in range(50))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] + [409] * 49, statuses
    (winner,) = [r for r in responses if r.status_code == 202]
    for loser in (r for r in responses if r.status_code == 409):
        assert_error(loser, 409, "already_resolved")
    job_id = f"dlq-retry:{entry_id}"
    assert winner.json() == {"job_id": job_id}

    assert await api.redis.zcard(EMAIL_SEND) == 1
    assert await api.redis.zrange(EMAIL_SEND, 0, -1) == [job_id.encode()]
    assert await api.redis.exists(f"arq:job:{job_id}") == 1
    queued = orjson.loads(await api.redis.get(f"arq:job:{job_id}"))
    assert queued["f"] == "send_email" and queued["a"] == ["a@b.c"]
    assert queued["k"]["template"] == "welcome" and queued["k"][RETRY_OF_KWARG] == str(entry_id)
    # The entry had no correlation id, so the retry request's id travels into the job.
    assert queued["k"][CORRELATION_KWARG] == winner.headers["x-request-id"]
    assert [await api.redis.zcard(q) for q in (DISTRIBUTE_LEAD, REPORT_EXPORT)] == [0, 0]

    entry = (await api.get(f"{BASE}/{entry_id}")).json()
    assert entry["resolved"] is True and entry["resolution"] == "retried"
    assert entry["retry_job_id"] == job_id and entry["resolved_by"] == api.email

    (audit,) = await audit_rows(api.pool, "dlq.retry", str(entry_id))
    assert audit["actor"] == api.email and audit["metadata"]["job_id"] == job_id
    assert audit["request_id"] == winner.headers["x-request-id"]
    assert audit["request_id"].startswith("req-retry-")


async def test_two_concurrent_bulk_retries_by_fingerprint_hand_each_of_500_to_one_task(api: Api) -> None:
    """Issue 19: the bulk API creates a redrive task (default rate) instead of enqueueing at once.
    Concurrent calls take disjoint entries (an entry waits in one live task at most)."""
    failed_at = datetime.now(UTC) - timedelta(minutes=10)
    await bulk_create_dlq_entries(api.pool, 500, job_prefix="bulk", failed_at=failed_at)
    targets = {row["id"] for row in await api.pool.fetch("SELECT id FROM dead_letter_queue")}
    # Decoys: same fingerprint on another queue, another fingerprint, already resolved.
    await bulk_create_dlq_entries(
        api.pool, 5, job_prefix="other-q", failed_at=failed_at, queue_name=DISTRIBUTE_LEAD
    )
    await bulk_create_dlq_entries(api.pool, 5, job_prefix="done", failed_at=failed_at, resolved_at=failed_at)
    await create_dlq_entry(api.pool, fingerprint="fp-other")

    body = {"queue": EMAIL_SEND, "fingerprint": "fp-bulk", "max": 500}
    first, second = await asyncio.gather(
        api.post(f"{BASE}/retry", body, request_id="req-bulk-a"),
        api.post(f"{BASE}/retry", body, request_id="req-bulk-b"),
    )
    answers = sorted([first, second], key=lambda r: r.status_code)
    winner, loser = answers[0], answers[1]
    assert winner.status_code == 202, winner.text
    assert_error(loser, 400, "empty_selection")  # everything already waits in the first task
    result = winner.json()
    assert set(result) == {"task_id", "retried", "job_ids", "rate_per_second", "max_in_flight"}
    assert result["retried"] == 500 and (result["rate_per_second"], result["max_in_flight"]) == (10.0, 20)
    assert set(result["job_ids"]) == {f"dlq-retry:{entry_id}" for entry_id in targets}
    assert await api.redis.zcard(EMAIL_SEND) == 0  # nothing pushed at once: the executor sends
    items = await api.pool.fetch("SELECT dlq_entry_id FROM redrive_task_entries")
    assert {row["dlq_entry_id"] for row in items} == targets and len(items) == 500
    (created,) = await audit_rows(api.pool, "redrive.create")
    assert created["actor"] == api.email and created["metadata"]["via"] == "dlq.bulk_retry"
    assert created["target_id"] == result["task_id"]
    task = await api.get(f"/api/v1/admin/redrives/{result['task_id']}")
    assert task.json()["state"] == "pending" and task.json()["total"] == 500


async def test_bulk_retry_by_ids_skips_resolved_unknown_and_unreplayable_entries(api: Api) -> None:
    base = datetime.now(UTC) - timedelta(hours=1)
    fresh = [await create_dlq_entry(api.pool, failed_at=base + timedelta(seconds=n)) for n in range(5)]
    resolved = await create_dlq_entry(api.pool, resolved_at=base)
    unreplayable = await create_dlq_entry(api.pool, function="<unknown>", reason="expired")
    unknown = uuid.uuid4()

    response = await api.post(
        f"{BASE}/retry",
        {"ids": [str(i) for i in (*fresh[:3], resolved, unreplayable, unknown, fresh[0])]},
        request_id="req-ids-1",
    )
    assert response.status_code == 202, response.text
    assert response.json()["retried"] == 3
    assert response.json()["job_ids"] == [f"dlq-retry:{i}" for i in fresh[:3]]
    assert (await api.get(f"{BASE}/{unreplayable}")).json()["resolved"] is False
    assert (await api.get(f"{BASE}/{resolved}")).json()["resolution"] == "manual"

    # max caps how many are taken (oldest first, those in a live task left out); the rest stay.
    capped = await api.post(f"{BASE}/retry", {"ids": [str(i) for i in fresh], "max": 1})
    assert capped.json()["job_ids"] == [f"dlq-retry:{fresh[3]}"]
    assert await api.redis.zcard(EMAIL_SEND) == 0
    audits = await audit_rows(api.pool, "redrive.create")
    assert audits[0]["request_id"] == "req-ids-1" and audits[0]["actor"] == api.email
    assert audits[0]["metadata"]["total"] == 3 and audits[0]["metadata"]["selection"] == {
        "ids": 7,
        "max": 1000,
    }


async def test_bulk_retry_by_fingerprint_defaults_to_100_and_honours_max(api: Api) -> None:
    failed_at = datetime.now(UTC) - timedelta(minutes=1)
    await bulk_create_dlq_entries(api.pool, 130, job_prefix="cap", failed_at=failed_at)
    # An entry with no payload to replay must not eat the budget of the group it sits in.
    await create_dlq_entry(
        api.pool, function="<unknown>", fingerprint="fp-bulk", failed_at=failed_at - timedelta(days=1)
    )
    body: dict[str, Any] = {"queue": EMAIL_SEND, "fingerprint": "fp-bulk"}
    default = await api.post(f"{BASE}/retry", body)
    assert default.status_code == 202 and default.json()["retried"] == 100
    small = await api.post(f"{BASE}/retry", body | {"max": 7})
    assert small.json()["retried"] == 7
    rest = await api.post(f"{BASE}/retry", body | {"max": 1000})
    assert rest.json()["retried"] == 23
    assert_error(await api.post(f"{BASE}/retry", body), 400, "empty_selection")
    assert await api.pool.fetchval("SELECT count(DISTINCT dlq_entry_id) FROM redrive_task_entries") == 130


# --- retry_of through a real worker -------------------------------------------------------------


async def test_retried_job_that_fails_again_points_back_via_retry_of(api: Api) -> None:
    calls: list[dict[str, Any]] = []

    async def always_fails(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        calls.append({"args": list(args), "kwargs": kwargs})
        raise ValueError(f"still broken for {kwargs.get('lead_id')}")

    old_id = await create_dlq_entry(
        api.pool,
        queue_name=EMAIL_SEND,
        function="always_fails",
        args=["first"],
        kwargs={"lead_id": "L-42"},
        error_type="ValueError",
        error_message="still broken for L-42",
        reason="permanent",
        attempts=1,
    )
    retried = await api.post(f"{BASE}/{old_id}/retry", request_id="req-replay-1")
    assert retried.status_code == 202, retried.text
    new_job_id = retried.json()["job_id"]

    functions = [job(EMAIL_SEND, "always_fails", always_fails, max_tries=1)]
    await run_burst(EMAIL_SEND, api.settings, api.pool, api.redis, functions)
    assert calls == [{"args": ["first"], "kwargs": {"lead_id": "L-42"}}]  # reserved kwargs stripped

    listing = (await api.get(BASE, params={"queue": EMAIL_SEND})).json()["items"]
    assert [item["id"] for item in listing][1:] == [str(old_id)]
    new_id = listing[0]["id"]
    new = (await api.get(f"{BASE}/{new_id}")).json()
    assert new["retry_of"] == str(old_id) and new["job_id"] == new_job_id
    assert new["function"] == "always_fails" and new["resolved"] is False
    assert new["args"] == ["first"] and new["kwargs"] == {"lead_id": "L-42"}
    assert new["error_type"] == "ValueError" and new["correlation_id"] == "req-replay-1"
    old = (await api.get(f"{BASE}/{old_id}")).json()
    assert old["resolution"] == "retried" and old["retry_job_id"] == new_job_id and old["retry_of"] is None

    # The new entry can be retried in turn, with its own deterministic job id.
    again = await api.post(f"{BASE}/{new_id}/retry")
    assert again.status_code == 202 and again.json() == {"job_id": f"dlq-retry:{new_id}"}


# --- keyset walk while failures keep arriving ---------------------------------------------------


async def _seed_walk_entries(pool: Any) -> None:
    now = datetime.now(UTC)
    await bulk_create_dlq_entries(pool, 20, job_prefix="tie", failed_at=now - timedelta(hours=1))
    await bulk_create_dlq_entries(
        pool, 6, job_prefix="res", failed_at=now - timedelta(hours=2), resolved_at=now - timedelta(hours=1)
    )
    for n in range(10):
        await create_dlq_entry(
            pool,
            queue_name=DISTRIBUTE_LEAD,
            function="distribute_lead",
            error_type="NoProviders",
            error_message=f"lead {n} has no matching providers",
            fingerprint="fp-dist",
            failed_at=now - timedelta(minutes=30 + n % 4),  # ties in fours
        )
    for n in range(8):
        await create_dlq_entry(
            pool,
            queue_name=REPORT_EXPORT,
            function="export_report",
            error_message=f"disk full writing export {n}",
            fingerprint="fp-disk",
            failed_at=now - timedelta(days=n),
            resolved_at=now if n % 3 == 0 else None,
        )


async def _arrive(pool: Any, n: int) -> None:
    """New failures that would match every filter the walks use, failed just now."""
    await create_dlq_entry(pool, fingerprint="fp-bulk", error_message=f"Connection closed new {n}")
    await create_dlq_entry(
        pool,
        queue_name=DISTRIBUTE_LEAD,
        function="distribute_lead",
        error_message=f"lead new-{n} has no matching providers",
        fingerprint="fp-dist",
    )
    await create_dlq_entry(
        pool, fingerprint="fp-bulk", error_message="late providers", resolved_at=datetime.now(UTC)
    )
    await create_dlq_entry(
        pool, queue_name=REPORT_EXPORT, function="export_report", error_message=f"disk full new {n}"
    )


WALK_FILTERS: list[tuple[dict[str, str], Callable[[dict[str, Any]], bool]]] = [
    ({}, lambda row: True),
    ({"queue": DISTRIBUTE_LEAD}, lambda row: row["queue_name"] == DISTRIBUTE_LEAD),
    ({"resolved": "false"}, lambda row: not row["resolved"]),
    ({"resolved": "true"}, lambda row: row["resolved"]),
    ({"fingerprint": "fp-bulk"}, lambda row: row["fingerprint"] == "fp-bulk"),
    ({"q": "providers"}, lambda row: "providers" in row["error_message"].split()),
    (
        {"queue": REPORT_EXPORT, "resolved": "false", "q": "disk"},
        lambda row: row["queue_name"] == REPORT_EXPORT and not row["resolved"],
    ),
]


@pytest.mark.parametrize(
    ("params", "matches"), WALK_FILTERS, ids=lambda v: str(v) if isinstance(v, dict) else ""
)
async def test_walking_every_page_while_failures_arrive_sees_each_entry_once(
    api: Api, params: dict[str, str], matches: Callable[[dict[str, Any]], bool]
) -> None:
    await _seed_walk_entries(api.pool)
    rows = await api.pool.fetch(
        "SELECT id, queue_name, fingerprint, error_message, resolved_at IS NOT NULL AS resolved"
        " FROM dead_letter_queue"
    )
    expected = {str(row["id"]) for row in rows if matches(dict(row))}
    assert expected  # every filter selects something at the start

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = params | {"limit": "7"} | ({"cursor": cursor} if cursor else {})
        response = await api.get(BASE, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert 0 < len(page["items"]) <= 7 or (not expected and not page["items"])
        seen.extend(page["items"])
        pages += 1
        await _arrive(api.pool, pages)
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 50

    ids = [item["id"] for item in seen]
    assert len(ids) == len(set(ids)), "an entry was listed twice"
    assert set(ids) == expected  # each start entry exactly once; arrivals sort before the cursor
    assert pages == -(-len(expected) // 7)
    keys = [(parse_time(item["failed_at"]), uuid.UUID(item["id"])) for item in seen]
    assert keys == sorted(keys, reverse=True)  # newest first, ties by id
    assert all(set(item) == LIST_FIELDS for item in seen)

    # A fresh walk from the top now also sees the arrivals (newest first).
    top = (await api.get(BASE, params=params | {"limit": "1"})).json()["items"][0]
    assert top["id"] not in expected


async def test_groups_count_unresolved_failures_by_fingerprint(api: Api) -> None:
    await _seed_walk_entries(api.pool)
    response = await api.get(f"{BASE}/groups")
    assert response.status_code == 200, response.text
    groups = {g["fingerprint"]: g for g in response.json()["groups"]}
    assert {fp: g["count"] for fp, g in groups.items()} == {"fp-bulk": 20, "fp-dist": 10, "fp-disk": 5}
    assert groups["fp-dist"]["queue"] == DISTRIBUTE_LEAD and groups["fp-dist"]["error_type"] == "NoProviders"
    assert set(groups["fp-dist"]) == {
        "fingerprint",
        "queue",
        "function",
        "error_type",
        "sample_message",
        "count",
        "first_failed_at",
        "last_failed_at",
        "kind",
        "kind_at",
    }
    assert groups["fp-dist"]["kind"] == "new" and groups["fp-dist"]["kind_at"].endswith("Z")
    only_resolved = (await api.get(f"{BASE}/groups", params={"resolved": "true", "queue": EMAIL_SEND})).json()
    assert [(g["fingerprint"], g["count"]) for g in only_resolved["groups"]] == [("fp-bulk", 6)]


# --- validation: 400 in the error shape, never 500 ----------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "queue=nope",
        "queue=",
        "resolved=maybe",
        "resolved=",
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "limit=",
        "limit=5&limit=6",
        "unknown=1",
        "page=2",
        "q=",
        "q=" + "x" * 201,
        "fingerprint=" + "f" * 65,
        "fingerprint=a%00b",
        "q=disk%00full",
        "cursor=not-a-cursor",
        "cursor=%F0%9F%92%A9",
        "cursor=" + "A" * 40,
    ],
)
async def test_list_rejects_bad_query_parameters_with_400(api: Api, query: str) -> None:
    response = await api.client.get(f"{BASE}?{query}", headers=api.headers())
    assert_error(response, 400)


@pytest.mark.parametrize(
    "q", ["!!!", "-", "a & b | !c", "'", ":*", '"unterminated', "<->", "providers OR disk"]
)
async def test_free_text_search_takes_any_text_without_error(api: Api, q: str) -> None:
    await create_dlq_entry(api.pool, error_message="lead 3 has no providers")
    response = await api.get(BASE, params={"q": q})
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"items", "next_cursor"}


@pytest.mark.parametrize("query", ["queue=nope", "resolved=maybe", "limit=5"])
async def test_groups_rejects_bad_query_parameters_with_400(api: Api, query: str) -> None:
    assert_error(await api.client.get(f"{BASE}/groups?{query}", headers=api.headers()), 400)


async def test_tampered_or_foreign_cursors_are_400_invalid_cursor(api: Api) -> None:
    await bulk_create_dlq_entries(api.pool, 5, job_prefix="cur", failed_at=datetime.now(UTC))
    first = (await api.get(BASE, params={"limit": "2"})).json()
    cursor = first["next_cursor"]
    assert cursor is not None
    ok = await api.get(BASE, params={"limit": "2", "cursor": cursor})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 2

    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-5] ^= 0x01  # flip a bit of the signed payload
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    last = datetime.now(UTC) - timedelta(days=1)
    foreign = encode_cursor(last, uuid.uuid4(), cursor_secret("someone else's key"))
    for bad in (tampered, foreign, cursor[:-3], cursor + "AAAA"):
        assert_error(await api.get(BASE, params={"cursor": bad}), 400, "invalid_cursor")


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"ids"',
        b"null",
        b"{}",
        b'{"ids": "abc"}',
        b'{"ids": []}',
        b'{"ids": ["nope"]}',
        b'{"ids": [1]}',
        b'{"ids": [null]}',
        b'{"queue": "email_send"}',
        b'{"fingerprint": "fp"}',
        b'{"queue": "nope", "fingerprint": "fp"}',
        b'{"queue": 1, "fingerprint": "fp"}',
        b'{"queue": "email_send", "fingerprint": ["fp"]}',
        b'{"queue": "email_send", "fingerprint": "fp", "max": 0}',
        b'{"queue": "email_send", "fingerprint": "fp", "max": 1001}',
        b'{"queue": "email_send", "fingerprint": "fp", "max": "5"}',
        b'{"queue": "email_send", "fingerprint": "fp", "max": 1.5}',
        b'{"queue": "email_send", "fingerprint": "fp", "max": true}',
        b'{"queue": "email_send", "fingerprint": "fp", "extra": 1}',
        b'{"queue": "email_send", "fingerprint": "fp\\u0000"}',
        b'{"ids": ["00000000-0000-0000-0000-000000000001"], "queue": "email_send", "fingerprint": "fp"}',
        b'{"ids": ["00000000-0000-0000-0000-000000000001"], "queue": "email_send"}',
        b'{"ids": ["00000000-0000-0000-0000-000000000001"], "fingerprint": "fp"}',
    ],
)
async def test_bulk_retry_rejects_bad_bodies_with_400(api: Api, content: bytes) -> None:
    await create_dlq_entry(api.pool, fingerprint="fp")
    assert_error(await api.post(f"{BASE}/retry", content=content), 400, "invalid_request")
    assert await api.redis.zcard(EMAIL_SEND) == 0
    assert await audit_rows(api.pool, "redrive.create") == []


async def test_bulk_retry_rejects_more_than_1000_ids(api: Api) -> None:
    ids = [str(uuid.uuid4()) for _ in range(1001)]
    assert_error(await api.post(f"{BASE}/retry", {"ids": ids}), 400, "invalid_request")


@pytest.mark.parametrize(
    ("action", "content"),
    [
        ("retry", b"not json"),
        ("retry", b"[]"),
        ("retry", b'{"force": true}'),
        ("resolve", b"not json"),
        ("resolve", b'["note"]'),
        ("resolve", b'{"note": 5}'),
        ("resolve", b'{"note": ["x"]}'),
        ("resolve", b'{"note": "ok", "by": "me"}'),
        ("resolve", b'{"note": "nul \\u0000 inside"}'),
        ("resolve", b'{"note": "' + b"x" * 2001 + b'"}'),
    ],
)
async def test_retry_and_resolve_reject_bad_bodies_with_400(api: Api, action: str, content: bytes) -> None:
    entry_id = await create_dlq_entry(api.pool)
    assert_error(await api.post(f"{BASE}/{entry_id}/{action}", content=content), 400, "invalid_request")
    assert (await api.get(f"{BASE}/{entry_id}")).json()["resolved"] is False
    assert await api.redis.zcard(EMAIL_SEND) == 0


@pytest.mark.parametrize("action", ["retry", "resolve"])
async def test_state_changes_on_a_malformed_id_are_400(api: Api, action: str) -> None:
    assert_error(await api.post(f"{BASE}/not-a-uuid/{action}", {}), 400, "invalid_request")


async def test_dlq_routes_need_an_admin_session(api: Api) -> None:
    entry_id = await create_dlq_entry(api.pool)
    for method, path in [
        ("GET", BASE),
        ("GET", f"{BASE}/groups"),
        ("GET", f"{BASE}/{entry_id}"),
        ("POST", f"{BASE}/{entry_id}/retry"),
        ("POST", f"{BASE}/{entry_id}/resolve"),
        ("POST", f"{BASE}/retry"),
    ]:
        assert_error(await api.client.request(method, path), 401, "unauthenticated")
    assert (await api.get(f"{BASE}/{entry_id}")).json()["resolved"] is False


async def test_audit_route_shows_who_resolved_what_in_which_request(api: Api) -> None:
    entry_id = await create_dlq_entry(api.pool)
    resolved = await api.post(
        f"{BASE}/{entry_id}/resolve", {"note": "fixed upstream"}, request_id="req-audit-1"
    )
    assert resolved.status_code == 200
    response = await api.get("/api/v1/admin/audit", {"action": "dlq.resolve", "target_id": str(entry_id)})
    assert response.status_code == 200
    (item,) = response.json()["items"]
    assert item["actor"] == api.email and item["request_id"] == "req-audit-1"
    assert item["metadata"] == {"note": "fixed upstream"} and item["occurred_at"].endswith("Z")
    assert (await api.get("/api/v1/admin/audit", {"limit": "0"})).status_code == 400
    assert (await api.get("/api/v1/admin/audit", {"actor": "x"})).status_code == 400

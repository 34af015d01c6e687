"""Redrive tasks (issue 19): creation freezes the selection, the API's refusals and state changes,
and the executor over a real arq worker: exactly once, outcomes counted, the breaker, the lease,
queue pauses honoured."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet

from shared.infra.config import Settings
from shared.infra.metrics import Metrics
from shared.infra.redis import queue_paused_key
from shared.jobs.pause_state import PauseState
from shared.jobs.queues import EMAIL_SEND
from shared.redrive_tasks import selection
from shared.redrive_tasks.control import pending_queues
from shared.redrive_tasks.executor import RedriveExecutor
from shared.redrive_tasks.lease import claim
from shared.redrive_tasks.sending import send_batch
from shared.redrive_tasks.throttle import Throttle
from tests.factories import create_admin, create_admin_session, create_dlq_entry
from tests.helpers import assert_error, running_app
from tests.worker_support import job, worker_running
from worker.fmhl_worker import FmhlWorker
from worker.redrive import stop_executor

BASE = "/api/v1/admin/redrives"


@dataclasses.dataclass
class Api:
    client: httpx.AsyncClient
    headers: dict[str, str]
    support_headers: dict[str, str]
    pool: Any
    redis: Any
    settings: Settings

    async def post(self, path: str, body: Any = None, *, support: bool = False) -> httpx.Response:
        headers = (self.support_headers if support else self.headers) | {"Content-Type": "application/json"}
        return await self.client.post(
            path, content=orjson.dumps(body) if body is not None else b"", headers=headers
        )

    async def get(self, path: str, *, support: bool = False, **params: Any) -> httpx.Response:
        return await self.client.get(
            path, params=params, headers=self.support_headers if support else self.headers
        )


@pytest.fixture
async def api(settings: Settings, clean_db: Any, redis: Any) -> AsyncIterator[Api]:
    settings = dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())
    assert settings.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=settings.mfa_encryption_key)
    support = await create_admin(clean_db, mfa_encryption_key=settings.mfa_encryption_key, role="support")
    admin_token = await create_admin_session(clean_db, admin.user_id)
    support_token = await create_admin_session(clean_db, support.user_id)
    async with running_app(settings) as (_, client):
        yield Api(
            client,
            {"Authorization": f"Bearer {admin_token}"},
            {"Authorization": f"Bearer {support_token}"},
            clean_db,
            redis,
            settings,
        )


async def entries(
    pool: Any, n: int, *, fingerprint: str = "fp-a", function: str = "probe", **kw: Any
) -> list[uuid.UUID]:
    return [
        await create_dlq_entry(pool, fingerprint=fingerprint, function=function, kwargs={"n": i}, **kw)
        for i in range(n)
    ]


# --- creation, dry run, refusals ---------------------------------------------------------------


async def test_dry_run_counts_and_samples_and_creation_freezes_the_selection(api: Api) -> None:
    await entries(api.pool, 5)
    await entries(api.pool, 2, fingerprint="fp-b")
    await create_dlq_entry(api.pool, fingerprint="fp-a", resolved_at=time_now())
    await create_dlq_entry(api.pool, fingerprint="fp-a", function="<unknown>")
    body = {"name": "smtp back", "filter": {"queue": EMAIL_SEND, "fingerprint": "fp-a"}, "dry_run": True}

    dry = await api.post(BASE, body)
    assert dry.status_code == 200, dry.text
    assert dry.json()["kind"] == "dry_run" and dry.json()["count"] == 5 and len(dry.json()["sample"]) == 5
    assert await api.pool.fetchval("SELECT count(*) FROM redrive_tasks") == 0

    created = await api.post(BASE, body | {"dry_run": False, "reason": "provider recovered"})
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["kind"] == "redrive_task" and task["state"] == "pending" and task["total"] == 5
    assert task["rate_per_second"] == 10.0 and task["max_in_flight"] == 20  # the written-down defaults
    assert task["remaining"] == 5 and task["sent"] == 0 and task["created_by"].startswith("admin-")
    await entries(api.pool, 3)  # later failures never join
    detail = (await api.get(f"{BASE}/{task['id']}")).json()
    assert detail["total"] == 5
    assert (
        await api.pool.fetchval(
            "SELECT count(*) FROM redrive_task_entries WHERE task_id = $1", uuid.UUID(task["id"])
        )
        == 5
    )
    audit = await api.pool.fetch("SELECT * FROM audit_log WHERE action = 'redrive.create'")
    assert len(audit) == 1 and audit[0]["target_id"] == task["id"]


async def test_an_entry_waits_in_one_live_task_at_most(api: Api) -> None:
    await entries(api.pool, 3)
    first = (await api.post(BASE, {"name": "a", "filter": {"fingerprint": "fp-a"}})).json()
    assert_error(
        await api.post(BASE, {"name": "b", "filter": {"fingerprint": "fp-a"}}), 400, "empty_selection"
    )
    await api.post(f"{BASE}/{first['id']}/cancel")  # a cancelled task lets its entries go
    again = await api.post(BASE, {"name": "c", "filter": {"fingerprint": "fp-a"}})
    assert again.status_code == 201 and again.json()["total"] == 3


async def test_by_ids_takes_only_the_unresolved_replayable_ones(api: Api) -> None:
    ids = await entries(api.pool, 3)
    resolved = await create_dlq_entry(api.pool, resolved_at=time_now())
    created = await api.post(BASE, {"name": "ids", "ids": [str(i) for i in [*ids, resolved, uuid.uuid4()]]})
    assert created.status_code == 201, created.text
    assert created.json()["total"] == 3 and created.json()["selection"] == {"ids": 5}


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "filter": {"queue": EMAIL_SEND, "colour": "red"}},
        {"name": "x", "filter": {"fingerprint": "fp-a"}, "rate_per_second": 0},
        {"name": "x", "filter": {"fingerprint": "fp-a"}, "rate_per_second": -5},
        {"name": "x", "filter": {"fingerprint": "fp-a"}, "max_in_flight": 0},
        {"name": "x", "filter": {}},
        {"name": "x"},
        {"name": "x", "ids": [], "filter": {"fingerprint": "fp-a"}},
        {"name": "x", "ids": ["not-a-uuid"]},
        {"name": "", "filter": {"fingerprint": "fp-a"}},
        {"name": "x", "filter": {"failed_from": "2024-01-01T00:00:00"}},
        {"name": "x", "filter": {"queue": "nope"}},
        {"name": "x", "filter": {"fingerprint": "fp-a"}, "breaker_threshold": 1.5},
    ],
)
async def test_bad_input_is_a_400_and_creates_nothing(api: Api, body: dict[str, Any]) -> None:
    await entries(api.pool, 2)
    assert_error(await api.post(BASE, body), 400)
    assert await api.pool.fetchval("SELECT count(*) FROM redrive_tasks") == 0


async def test_an_empty_selection_is_a_400(api: Api) -> None:
    await entries(api.pool, 2)
    response = await api.post(BASE, {"name": "x", "filter": {"fingerprint": "fp-none"}})
    assert_error(response, 400, "empty_selection")
    assert_error(await api.post(BASE, {"name": "x", "ids": [str(uuid.uuid4())]}), 400, "empty_selection")
    assert await api.pool.fetchval("SELECT count(*) FROM redrive_tasks") == 0


async def test_support_is_refused_on_the_api_like_every_admin_route(api: Api) -> None:
    """Support reads tasks on the console; on the API it gets 403, reads included."""
    await entries(api.pool, 2)
    task = (await api.post(BASE, {"name": "x", "filter": {"fingerprint": "fp-a"}})).json()
    assert (await api.get(BASE)).json()["items"][0]["id"] == task["id"]
    assert_error(await api.get(BASE, support=True), 403)
    assert_error(await api.get(f"{BASE}/{task['id']}", support=True), 403)
    assert_error(await api.post(BASE, {"name": "y", "filter": {"fingerprint": "fp-a"}}, support=True), 403)
    for action in ("pause", "resume", "cancel"):
        assert_error(await api.post(f"{BASE}/{task['id']}/{action}", support=True), 403)


async def test_state_changes_refuse_the_wrong_state_and_concurrent_submits_have_one_winner(api: Api) -> None:
    await entries(api.pool, 2)
    task = (await api.post(BASE, {"name": "x", "filter": {"fingerprint": "fp-a"}})).json()
    url = f"{BASE}/{task['id']}"
    assert_error(await api.post(f"{url}/resume"), 409, "wrong_state")
    answers = await asyncio.gather(*[api.post(f"{url}/pause") for _ in range(5)])
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409]
    assert (await api.get(url)).json()["state"] == "paused"
    resumed = await api.post(f"{url}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    cancelled = await api.post(f"{url}/cancel")
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["finished_at"]
    assert_error(await api.post(f"{url}/resume"), 409)
    assert_error(await api.post(f"{BASE}/{uuid.uuid4()}/pause"), 404)
    actions = [
        r["action"]
        for r in await api.pool.fetch(
            "SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id", task["id"]
        )
    ]
    assert actions == ["redrive.create", "redrive.pause", "redrive.resume", "redrive.cancel"]


async def test_list_pages_by_keyset(api: Api) -> None:
    for i in range(3):
        await entries(api.pool, 1, fingerprint=f"fp-{i}")
    ids = [
        (await api.post(BASE, {"name": f"t{i}", "filter": {"fingerprint": f"fp-{i}"}})).json()["id"]
        for i in range(3)
    ]
    first = (await api.get(BASE, limit=2)).json()
    second = (await api.get(BASE, limit=2, cursor=first["next_cursor"])).json()
    assert [t["id"] for t in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    assert_error(await api.get(BASE, cursor="garbage"), 400)


# --- the executor over a real worker -----------------------------------------------------------


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def probe_worker(api: Api, fail: bool) -> contextlib.AbstractAsyncContextManager[FmhlWorker]:
    """An ``email_send`` worker whose one function, ``probe``, fails (once, no retry) or succeeds."""

    async def probe(ctx: dict[str, Any], n: int) -> int:
        if fail:
            raise ValueError(f"provider still down for {n}")
        return n

    functions = [job(EMAIL_SEND, "probe", probe, max_tries=1)]
    return worker_running(EMAIL_SEND, api.settings, api.pool, api.redis, functions, poll_delay=0.01)


@contextlib.asynccontextmanager
async def executor_running(
    pool: Any, redis: Any, metrics: Metrics, **kw: Any
) -> AsyncIterator[RedriveExecutor]:
    executor = RedriveExecutor(pool, redis, metrics, **kw)
    runner = asyncio.create_task(executor.run())
    try:
        yield executor
    finally:
        await stop_executor(runner)


async def wait_for_state(api: Api, task_id: str, *states: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task: dict[str, Any] = (await api.get(f"{BASE}/{task_id}")).json()
        if task["state"] in states:
            return task
        assert time.monotonic() < deadline, task
        await asyncio.sleep(0.1)


async def test_a_task_redrives_each_entry_once_and_completes_with_outcomes(
    api: Api, metrics: Metrics
) -> None:
    ids = await entries(api.pool, 40)
    task = (
        await api.post(
            BASE,
            {"name": "ok", "filter": {"fingerprint": "fp-a"}, "rate_per_second": 100, "max_in_flight": 10},
        )
    ).json()
    started = time.monotonic()
    async with (
        probe_worker(api, fail=False),
        executor_running(api.pool, api.redis, metrics),
    ):
        done = await wait_for_state(api, task["id"], "completed", "tripped")
    elapsed = time.monotonic() - started
    assert done["state"] == "completed", done
    assert (done["sent"], done["succeeded"], done["failed_again"], done["in_flight"], done["remaining"]) == (
        40,
        40,
        0,
        0,
        0,
    )
    assert elapsed >= 39 / 100  # never faster than the rate
    resolved = await api.pool.fetch(
        "SELECT retry_job_id FROM dead_letter_queue WHERE id = ANY($1::uuid[])", ids
    )
    assert sorted(r["retry_job_id"] for r in resolved) == sorted(f"dlq-retry:{i}" for i in ids)
    assert await api.pool.fetchval("SELECT count(*) FROM dead_letter_queue WHERE retry_of IS NOT NULL") == 0
    assert await api.pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'dlq.retry'") == 40
    assert await api.pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'redrive.completed'") == 1
    rendered = metrics.render()[0].decode()
    assert 'fmhl_redrive_jobs_total{outcome="succeeded",queue="email_send"} 40' in rendered or (
        'fmhl_redrive_jobs_total{queue="email_send",outcome="succeeded"} 40' in rendered
    ), rendered


async def test_the_breaker_trips_when_retries_fail_again_and_nothing_more_is_sent(
    api: Api, metrics: Metrics
) -> None:
    await entries(api.pool, 200)
    body = {
        "name": "still down",
        "filter": {"fingerprint": "fp-a"},
        "rate_per_second": 200,
        "max_in_flight": 10,
    }
    task = (await api.post(BASE, body)).json()
    async with (
        probe_worker(api, fail=True),
        executor_running(api.pool, api.redis, metrics),
    ):
        tripped = await wait_for_state(api, task["id"], "tripped", "completed")
        await asyncio.sleep(1.0)
        later = (await api.get(f"{BASE}/{task['id']}")).json()
    assert tripped["state"] == "tripped" and "failed again" in tripped["state_reason"], tripped
    assert later["sent"] == tripped["sent"] <= 20 + 10  # N outcomes + what was in flight
    assert later["failed_again"] == later["sent"]  # outcomes of jobs in flight still counted
    per_entry = await api.pool.fetch(
        "SELECT retry_of, count(*) AS n FROM dead_letter_queue WHERE retry_of IS NOT NULL GROUP BY retry_of"
    )
    assert len(per_entry) == later["sent"] and {r["n"] for r in per_entry} == {1}
    assert await api.pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'redrive.tripped'") == 1
    assert "fmhl_redrive_tripped_total" in metrics.render()[0].decode()
    # an admin resumes: the breaker counts afresh (the old outcomes do not trip it at once)
    resumed = await api.post(f"{BASE}/{task['id']}/resume")
    assert resumed.json()["state"] == "running"
    row = await api.pool.fetchrow(
        "SELECT breaker_base_failed FROM redrive_tasks WHERE id = $1", uuid.UUID(task["id"])
    )
    assert row["breaker_base_failed"] == later["failed_again"]


async def test_pause_and_a_paused_queue_stop_sending(api: Api, metrics: Metrics) -> None:
    await entries(api.pool, 30)
    pause = PauseState(by="ops", reason="incident", since=time_now())
    await api.redis.set(queue_paused_key(EMAIL_SEND), pause.encode())
    task = (
        await api.post(BASE, {"name": "p", "filter": {"fingerprint": "fp-a"}, "rate_per_second": 50})
    ).json()
    async with (
        probe_worker(api, fail=False),
        executor_running(api.pool, api.redis, metrics),
    ):
        await wait_for_state(api, task["id"], "running")
        await asyncio.sleep(1.0)
        waiting = (await api.get(f"{BASE}/{task['id']}")).json()
        assert waiting["sent"] == 0 and waiting["waiting_on_paused_queues"] == [EMAIL_SEND]
        await api.redis.delete(queue_paused_key(EMAIL_SEND))
        await asyncio.sleep(0.3)
        await api.post(f"{BASE}/{task['id']}/pause")
        await asyncio.sleep(0.6)
        paused = (await api.get(f"{BASE}/{task['id']}")).json()
        await asyncio.sleep(0.6)
        still = (await api.get(f"{BASE}/{task['id']}")).json()
        assert 0 < paused["sent"] < 30 and still["sent"] == paused["sent"]
        await api.post(f"{BASE}/{task['id']}/resume")
        done = await wait_for_state(api, task["id"], "completed")
    assert done["succeeded"] == 30


async def test_two_executors_racing_one_drives_and_a_stale_holder_is_fenced(api: Api) -> None:
    await entries(api.pool, 5)
    task = (await api.post(BASE, {"name": "race", "filter": {"fingerprint": "fp-a"}})).json()

    async def try_claim(owner: str) -> Any:
        async with api.pool.acquire() as conn:
            return await claim(conn, owner, 0.5, [])

    leases = await asyncio.gather(*[try_claim(f"exec-{i}") for i in range(8)])
    held = [lease for lease in leases if lease is not None]
    assert len(held) == 1 and str(held[0].task_id) == task["id"]
    await asyncio.sleep(0.7)  # the lease expires; another executor takes it
    async with api.pool.acquire() as conn:
        newer = await claim(conn, "exec-new", 10, [])
    assert newer is not None and newer.epoch == held[0].epoch + 1
    stale = await send_batch(
        api.pool, api.redis, None, held[0], count=5, paused_queues=[], throttle=Throttle(100, 0)
    )
    assert not stale.running and stale.sent == 0
    assert (
        await api.pool.fetchval("SELECT count(*) FROM dead_letter_queue WHERE resolved_at IS NOT NULL") == 0
    )


async def test_frozen_chunks_become_items_in_order_and_each_entry_is_sent_once(api: Api) -> None:
    """sql/011: 2,300 entries freeze as 3 chunks (nothing else written at creation); the sender turns
    them into items as it goes, in failed_at order, each entry sent once; a paused queue's entries
    become items that wait; a chunk still counts as its entries' pending items meanwhile."""
    n, chunk = 2_300, selection.CHUNK_SIZE
    await api.pool.execute(
        """INSERT INTO dead_letter_queue (queue_name, job_id, function, args, kwargs, error_type,
                                          error_message, fingerprint, attempts, reason, failed_at)
           SELECT CASE WHEN g % 10 = 0 THEN 'report_export' ELSE 'email_send' END, 'chunk-' || g,
                  'probe', '[]', jsonb_build_object('n', g), 'Boom', 'boom', 'fp-chunks', 1, 'exhausted',
                  now() - interval '1 hour' + (($1::int - g) * interval '1 millisecond')
           FROM generate_series(1, $1::int) AS g""",
        n,
    )
    body = {"name": "big", "filter": {"fingerprint": "fp-chunks"}, "rate_per_second": 5000}
    task = (await api.post(BASE, body | {"max_in_flight": 10_000})).json()
    task_id = uuid.UUID(task["id"])
    assert task["total"] == n
    chunks = await api.pool.fetchval("SELECT count(*) FROM redrive_task_chunks WHERE task_id = $1", task_id)
    assert chunks == -(-n // chunk) == 3
    assert await api.pool.fetchval("SELECT count(*) FROM redrive_task_items") == 0
    again = await api.post(BASE, {"name": "again", "filter": {"fingerprint": "fp-chunks"}})
    assert_error(again, 400, "empty_selection")  # chunked entries wait in a live task
    async with api.pool.acquire() as conn:
        assert await pending_queues(conn, task_id) == ["email_send", "report_export"]
        lease = await claim(conn, "chunk-test", 30, [])
    assert lease is not None and lease.task_id == task_id
    sent = 0
    while True:
        batch = await send_batch(
            api.pool, api.redis, None, lease, count=500, paused_queues=["report_export"],
            throttle=Throttle(1_000_000, time.monotonic()),
        )  # fmt: skip
        assert batch.running
        if batch.sent == 0:
            break
        sent += batch.sent
    assert sent == n - n // 10
    assert await api.pool.fetchval("SELECT count(*) FROM redrive_task_chunks") == 0
    items = await api.pool.fetch(
        """SELECT i.seq, i.state, i.queue_name, i.retry_job_id, d.id, d.failed_at, d.retry_job_id AS marked
           FROM redrive_task_items AS i JOIN dead_letter_queue AS d ON d.id = i.dlq_entry_id
           ORDER BY i.seq"""
    )
    assert [r["seq"] for r in items] == list(range(1, n + 1))
    assert [r["failed_at"] for r in items] == sorted(r["failed_at"] for r in items)  # oldest first
    waiting = [r for r in items if r["queue_name"] == "report_export"]
    assert len(waiting) == n // 10 and {r["state"] for r in waiting} == {"pending"}
    done = [r for r in items if r["queue_name"] == "email_send"]
    assert {r["state"] for r in done} == {"sent"}
    assert all(r["retry_job_id"] == r["marked"] == f"dlq-retry:{r['id']}" for r in done)
    assert await api.redis.zcard(EMAIL_SEND) == len(done)
    async with api.pool.acquire() as conn:
        assert await pending_queues(conn, task_id) == ["report_export"]


# --- fmhl-ops redrive as a process -------------------------------------------------------------


async def test_cli_creates_lists_shows_and_acts_with_one_line_errors(
    clean_db: Any, redis: Any, database_url: str, redis_url: str
) -> None:
    from tests.integration.test_queue_pause import _fmhl_ops, _one_line_error, _printed

    await entries(clean_db, 4)
    flt = '{"queue": "email_send", "fingerprint": "fp-a"}'
    dry = await _fmhl_ops(
        ["redrive", "create", "--name", "x", "--filter", flt, "--dry-run"], database_url, redis_url
    )
    assert dry.returncode == 0, dry.stderr
    assert _printed(dry)[0] == "4 entries would be redriven" and len(_printed(dry)) == 5
    made = await _fmhl_ops(
        ["redrive", "create", "--name", "smtp", "--filter", flt, "--rate", "5", "--reason", "back"],
        database_url,
        redis_url,
    )
    assert made.returncode == 0, made.stderr
    task_id, state = _printed(made)[0].split("\t")[:2]
    assert state == "pending" and "sent 0/4" in _printed(made)[0] and "of 5/s" in _printed(made)[0]
    listed = await _fmhl_ops(["redrive", "list"], database_url, redis_url)
    assert _printed(listed)[0].startswith(task_id)
    paused = await _fmhl_ops(["redrive", "pause", task_id], database_url, redis_url)
    assert _printed(paused)[0].split("\t")[1].startswith("paused")
    assert "cannot pause" in _one_line_error(
        await _fmhl_ops(["redrive", "pause", task_id], database_url, redis_url)
    )
    shown = await _fmhl_ops(["redrive", "show", task_id], database_url, redis_url)
    assert "remaining 4" in _printed(shown)[0]
    assert "unknown filter field" in _one_line_error(
        await _fmhl_ops(
            ["redrive", "create", "--name", "x", "--filter", '{"colour": 1}'], database_url, redis_url
        )
    )
    assert "rate_per_second" in _one_line_error(
        await _fmhl_ops(
            ["redrive", "create", "--name", "x", "--filter", flt, "--rate", "0"], database_url, redis_url
        )
    )
    actors = await clean_db.fetch(
        "SELECT actor, action FROM audit_log WHERE action LIKE 'redrive.%' ORDER BY id"
    )
    assert [r["action"] for r in actors] == ["redrive.create", "redrive.pause"]
    assert all(r["actor"].startswith("cli:") for r in actors)

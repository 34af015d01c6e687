"""Any failure can be stored (issue 10, part 2).

A job may fail with any message and carry any JSON-able arguments; each failure becomes a DLQ row
an admin can read and retry (faithful, or escaped reversibly and flagged ``content_escaped``),
within a second or two, while the worker's other jobs keep running; capture costs time linear in
what the job carried; a record Postgres refuses never blocks the spool and stays visible.

Each test prints what it measured. Timing assertions are loose ratios and generous bounds (the
precise numbers belong in ``bench/``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from arq.jobs import Job
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared.dlq.browse import get_entry
from shared.dlq.capture import FailureRecord, capture
from shared.dlq.content import ERROR_MESSAGE_LIMIT, STACK_TRACE_LIMIT, map_strings, unescape_text
from shared.dlq.fingerprint import fingerprint
from shared.dlq.rejects import newest_rejected
from shared.dlq.spool import drain_spool
from shared.infra.config import Settings
from shared.infra.db import Database
from shared.infra.logs import configure_logging
from shared.infra.metrics import Metrics
from shared.infra.redis import DLQ_SPOOL_KEY, DLQ_SPOOL_REJECTED_KEY, deserialize_job
from shared.jobs.enqueue import enqueue_call
from shared.jobs.queues import EMAIL_SEND
from tests.factories import create_admin, create_admin_session
from tests.helpers import running_app
from tests.reliability.support import percentile
from tests.worker_support import job, run_burst
from worker.failure_records import record_from_exception

# serial: capture time and capture lag bounds (< 2 s), event-loop stalls (< 1 s)
pytestmark = pytest.mark.serial

QUEUE = EMAIL_SEND
MB = 1024 * 1024
BASE = "/api/v1/admin/queues/dlq"

# every code point Python strings hold (lone surrogates and NUL included)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4),
    max_leaves=25,
)


def _raised(factory: Callable[[], BaseException]) -> BaseException:
    try:
        raise factory()
    except BaseException as exc:
        return exc


def _record(exc: BaseException, args: list[Any], kwargs: dict[str, Any], job_id: str | None = None) -> Any:
    return record_from_exception(
        queue=QUEUE,
        job_id=job_id or f"hostile-{uuid.uuid4().hex}",
        function="send_email",
        args=tuple(args),
        kwargs=kwargs,
        exc=exc,
        attempts=1,
        reason="permanent",
        enqueued_at=None,
        correlation_id=None,
        retry_of=None,
    )


def _numbers_as_decimals(value: Any) -> Any:
    """JSON has one number type: jsonb keeps a float's shortest digits exactly (``4.6e16`` may come
    back as the int ``46000000000000000``), so numbers compare as decimals of those digits."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _numbers_as_decimals(v) for k, v in value.items()}
    return [_numbers_as_decimals(v) for v in value]


def _original(entry: Any) -> tuple[str, list[Any], dict[str, Any]]:
    """(message, args, kwargs) as the job carried them: what a reader or a retry sees."""
    if not entry.content_escaped:
        return entry.error_message, entry.args, entry.kwargs
    return (
        unescape_text(entry.error_message),
        map_strings(entry.args, unescape_text),
        map_strings(entry.kwargs, unescape_text),
    )


# -- every character, every JSON shape ---------------------------------------------------------
@pytest.mark.timeout(240)
async def test_any_text_and_any_json_arguments_round_trip(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """Hypothesis draws the failures (synchronously); each is then captured and read back."""
    examples: list[tuple[str, list[Any], dict[str, Any]]] = []

    @hypothesis_settings(max_examples=150, deadline=None, database=None)
    @given(
        message=ANY_TEXT,
        args=st.lists(JSON_VALUES, max_size=4),
        kwargs=st.dictionaries(ANY_TEXT, JSON_VALUES),
    )
    def draw(message: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        examples.append((message, args, kwargs))

    draw()
    db = Database.from_pool(settings, clean_db)
    escaped = 0
    started = time.perf_counter()
    for message, args, kwargs in examples:
        exc = _raised(lambda: ValueError(message))  # noqa: B023 - called at once
        record = _record(exc, args, kwargs)
        outcome = await capture(db, redis, record, None)
        assert outcome == "stored", (outcome, message, args, kwargs)
        entry_id = await clean_db.fetchval(
            "SELECT id FROM dead_letter_queue WHERE job_id = $1", record.job_id
        )
        async with clean_db.acquire() as conn:
            entry = await get_entry(conn, entry_id)
        escaped += entry.content_escaped
        text, stored_args, stored_kwargs = _original(entry)
        assert text == (message or repr(exc))
        assert _numbers_as_decimals([stored_args, stored_kwargs]) == _numbers_as_decimals([args, kwargs])
        assert entry.fingerprint == fingerprint("ValueError", message or repr(exc), "")
    print(
        f"\nhypothesis: {len(examples)} failures stored and read back faithfully "
        f"({escaped} escaped) in {time.perf_counter() - started:.2f}s"
    )
    assert len(examples) >= 100 and escaped > 0  # the strategy does reach NUL and lone surrogates


# -- explicit hostile failures --------------------------------------------------------------
class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class StrAndReprRaise(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class StrNotString(Exception):
    def __str__(self) -> Any:
        return 42


def _chain(length: int) -> BaseException:
    try:
        raise KeyError("root 0")
    except KeyError as first:
        current: BaseException = first
    for index in range(1, length):
        try:
            raise ValueError(f"link {index}") from current
        except ValueError as exc:
            current = exc
    return current


def _group(width: int, depth: int) -> BaseException:
    inner: BaseException = ExceptionGroup("leaf", [ValueError(f"v{i}") for i in range(width)])
    for level in range(depth):
        inner = ExceptionGroup(f"level {level}", [inner, TypeError(f"t{level}")])
    return _raised(lambda: inner)


def _recursion() -> BaseException:
    def down(n: int) -> int:
        return down(n + 1) + 1

    try:
        down(0)
    except RecursionError as exc:
        return exc
    raise AssertionError("did not raise")


def _deep(levels: int) -> Any:
    value: Any = "bottom\x00"
    for _ in range(levels):
        value = {"d": [value]}
    return value


HOSTILE_CASES: dict[str, Callable[[], tuple[BaseException, list[Any], dict[str, Any]]]] = {
    "message_5MB": lambda: (_raised(lambda: ValueError("lead 1234 " + "x" * (5 * MB))), [], {}),
    "nul_surrogates_backslashes": lambda: (
        _raised(lambda: ValueError("a\x00b\ud800c\\u0000d\\\\e\udfff")),
        ["\x00", "\\u0000", "\ud83d"],
        {"k\x00": {"\udc00": ["\\", "\x00\x00"]}},
    ),
    "str_raises": lambda: (_raised(StrRaises), [1], {}),
    "str_and_repr_raise": lambda: (_raised(StrAndReprRaise), [], {"a": 1}),
    "str_not_a_string": lambda: (_raised(StrNotString), [], {}),
    "chain_of_1000": lambda: (_chain(1000), [], {}),
    "group_wide_and_deep": lambda: (_group(1000, 40), [], {}),
    "recursion_1000_frames": lambda: (_recursion(), [], {}),
    "type_name_100k": lambda: (_raised(type("E" * 100_000, (Exception,), {})), [], {}),
    "regex_bomb_message": lambda: (_raised(lambda: ValueError("a." * MB + "'" * 1000 + "1." * MB)), [], {}),
    "args_1_5MB": lambda: (_raised(lambda: ValueError("big args")), ["y" * (3 * MB // 2)], {}),
    "args_4MB_too_large": lambda: (_raised(lambda: ValueError("huge args")), ["z" * (4 * MB)], {}),
    "args_nested_250": lambda: (_raised(lambda: ValueError("deep")), [_deep(120)], {"n": _deep(120)}),
    "args_int_beyond_64_bits": lambda: (_raised(lambda: ValueError("big int")), [2**100], {}),
    "args_nested_600": lambda: (_raised(lambda: ValueError("too deep")), [_deep(300)], {}),
}


async def test_each_hostile_failure_is_stored_readable_and_bounded_within_seconds(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    db = Database.from_pool(settings, clean_db)
    timings: dict[str, float] = {}
    for name, make in HOSTILE_CASES.items():
        exc, args, kwargs = make()
        started = time.perf_counter()
        record = _record(exc, args, kwargs, job_id=f"case-{name}")
        outcome = await capture(db, redis, record, None)
        timings[name] = time.perf_counter() - started
        assert outcome == "stored", (name, outcome)
    print("\ncapture time per hostile case (build record + store):")
    for name, seconds in timings.items():
        print(f"  {name:28s} {seconds * 1000:8.1f} ms")
    assert max(timings.values()) < 2.0, timings

    rows = {
        row["job_id"].removeprefix("case-"): row
        for row in await clean_db.fetch(
            "SELECT job_id, error_type, error_message, stack_trace, args, kwargs, content_escaped, "
            "payload_omitted, octet_length(error_message) + octet_length(stack_trace) AS text_bytes "
            "FROM dead_letter_queue"
        )
    }
    assert set(rows) == set(HOSTILE_CASES)
    for name, row in rows.items():
        assert len(row["error_message"]) <= ERROR_MESSAGE_LIMIT * 6 + 200, name
        assert len(row["stack_trace"]) <= STACK_TRACE_LIMIT * 6 + 200, name
    print("  stored text bytes (message + trace):", {n: r["text_bytes"] for n, r in rows.items()})
    assert rows["message_5MB"]["error_message"].endswith(
        f"…[truncated: error_message kept the first {ERROR_MESSAGE_LIMIT} of {5 * MB + 10} characters]"
    )
    assert rows["str_raises"]["error_message"] == "StrRaises()"  # repr when str() raises
    assert rows["str_and_repr_raise"]["error_message"].startswith(
        "<unprintable StrAndReprRaise: str() raised"
    )
    assert rows["chain_of_1000"]["stack_trace"].startswith("[… older exceptions of the chain omitted")
    assert "link 999" in rows["chain_of_1000"]["stack_trace"]
    assert "frames omitted" in rows["recursion_1000_frames"]["stack_trace"]
    assert len(rows["type_name_100k"]["error_type"]) == 256
    escaped = rows["nul_surrogates_backslashes"]
    assert (
        escaped["content_escaped"]
        and unescape_text(escaped["error_message"]) == "a\x00b\ud800c\\u0000d\\\\e\udfff"
    )
    assert map_strings(escaped["args"], unescape_text) == ["\x00", "\\u0000", "\ud83d"]
    assert len(rows["args_1_5MB"]["args"][0]) == 3 * MB // 2 and rows["args_1_5MB"]["payload_omitted"] is None
    assert rows["args_nested_250"]["payload_omitted"] is None
    for omitted in ("args_4MB_too_large", "args_int_beyond_64_bits", "args_nested_600"):
        assert rows[omitted]["payload_omitted"] and rows[omitted]["args"] == [], omitted
    print(
        "  payload_omitted:", {n: r["payload_omitted"][:80] for n, r in rows.items() if r["payload_omitted"]}
    )


async def test_indexed_fields_stay_within_btree_limits_however_they_are_escaped(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    """Job id, function and error type are indexed (unique key, failure groups): a btree row holds
    ~2.7 KB, and six bytes per escaped lone surrogate would overflow it; random ones barely compress."""
    rng = random.Random(7)
    noise = "".join(
        chr(rng.choice([rng.randrange(0xD800, 0xE000), rng.randrange(0x4E00, 0x9FFF), 0]))
        for _ in range(3000)
    )
    db = Database.from_pool(settings, clean_db)
    hostile_type = type(
        "E" + "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(2000)), (Exception,), {}
    )
    records = [
        _record(_raised(lambda: hostile_type("x")), [], {}, job_id="j-" + noise),
        _record(_raised(lambda: ValueError("y")), [], {}, job_id="k-" + noise[:500]),
    ]
    outcomes = [await capture(db, redis, record, None) for record in records]
    rows = await clean_db.fetch(
        "SELECT job_id, error_type, octet_length(job_id) AS job_bytes, octet_length(error_type) AS type_bytes"
        " FROM dead_letter_queue ORDER BY job_id"
    )
    print(f"\nindexed fields: outcomes {outcomes}, bytes {[(r['job_bytes'], r['type_bytes']) for r in rows]}")
    assert outcomes == ["stored", "stored"]
    assert all(r["job_bytes"] <= 1000 and r["type_bytes"] <= 1000 for r in rows)
    assert "sha256:" in rows[0]["job_id"] and unescape_text(rows[1]["job_id"]).startswith("k-" + noise[:50])


def _median_seconds(fn: Callable[[], Any], runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return percentile(samples, 50)


def test_capture_cost_is_linear_in_what_the_job_carried() -> None:
    """4x the input costs about 4x the time (asserted loosely: under 10x), never 16x."""
    cases = {
        "message": lambda size: (_raised(lambda: ValueError("id 7 " + "m" * size)), [], {}),
        "regex_bomb_message": lambda size: (_raised(lambda: ValueError("a." * (size // 2))), [], {}),
        "args_with_nul (escaped)": lambda size: (_raised(lambda: ValueError("x")), ["\x00" + "n" * size], {}),
        "args_many_strings": lambda size: (_raised(lambda: ValueError("x")), [["s\\"] * (size // 8)], {}),
    }
    print()
    for name, make in cases.items():
        small_case, large_case = make(MB // 4), make(MB)
        small = _median_seconds(functools.partial(_record, *small_case))
        large = _median_seconds(functools.partial(_record, *large_case))
        ratio = large / max(small, 1e-6)
        print(f"build {name:26s} 0.25 MB {small * 1000:6.2f} ms, 1 MB {large * 1000:6.2f} ms, x{ratio:.1f}")
        assert large < 0.5 and (ratio < 10 or large < 0.01), (name, small, large)


# -- through a real worker -------------------------------------------------------------------
async def test_a_worker_captures_hostile_failures_while_other_jobs_and_the_loop_keep_going(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    raised_at: dict[str, float] = {}
    done: list[int] = []

    hostile: dict[str, Callable[[], BaseException]] = {
        "message_5MB": lambda: ValueError("lead 99 " + "x" * (5 * MB)),
        "nul_message": lambda: ValueError("null \x00 byte and lone \ud800 surrogate"),
        "str_raises": StrRaises,
        "str_and_repr_raise": StrAndReprRaise,
        "chain_of_1000": lambda: _chain(1000),
        "group_wide_and_deep": lambda: _group(1000, 40),
    }

    async def fail_hostile(ctx: dict[str, Any], case: str, payload: Any) -> None:
        raised_at[case] = time.time()
        if case == "recursion":
            raise _recursion()
        if case in hostile:
            raise hostile[case]()
        raise ValueError(f"{case} carried {len(orjson.dumps(payload))} bytes")

    async def work(ctx: dict[str, Any], n: int) -> None:
        await asyncio.sleep(0.01)
        done.append(n)

    payloads: dict[str, Any] = {"args_1_5MB": "p" * (3 * MB // 2), "nul_args": ["\x00", {"k\x00": "\\"}]}
    cases = [*hostile, "recursion", "args_1_5MB", "nul_args"]
    for index, case in enumerate(cases):
        await enqueue_call(
            redis,
            "fail_hostile",
            args=[case, payloads.get(case)],
            kwargs={},
            job_id=f"hostile-{case}",
            queue=QUEUE,
        )
        for n in range(index * 10, index * 10 + 10):
            await enqueue_call(redis, "work", args=[n], kwargs={}, queue=QUEUE)

    stalls: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            stalls.append(now - last - 0.01)
            last = now

    configure_logging("WARNING", "json")  # production logging: arq's failure lines go through ours
    ticking = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        await run_burst(
            QUEUE,
            settings,
            clean_db,
            redis,
            [job(QUEUE, "fail_hostile", fail_hostile), job(QUEUE, "work", work)],
        )
    finally:
        stop.set()
        await ticking
    elapsed = time.perf_counter() - started
    rows = await clean_db.fetch("SELECT job_id, captured_at, content_escaped FROM dead_letter_queue")
    lags = {
        row["job_id"]: row["captured_at"].timestamp() - raised_at[row["job_id"].removeprefix("hostile-")]
        for row in rows
        if row["job_id"].removeprefix("hostile-") in raised_at
    }
    print(
        f"\nworker burst: {len(cases)} hostile + {len(done)} normal jobs in {elapsed:.2f}s; "
        f"capture lag max {max(lags.values()) * 1000:.0f} ms; event-loop stall p99 "
        f"{percentile(stalls, 99) * 1000:.1f} ms, max {max(stalls) * 1000:.1f} ms"
    )
    assert len(done) == 10 * len(cases)
    assert {row["job_id"] for row in rows} == {f"hostile-{case}" for case in cases}
    assert max(lags.values()) < 2.0, lags
    assert max(stalls) < 1.0  # heartbeats and other jobs share this loop


async def test_an_admin_reads_and_retries_escaped_entries_faithfully(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    keyed = dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    db = Database.from_pool(settings, clean_db)
    args = ["to\x00@example.test", {"tpl\\": "\x00\\u0000"}]
    kwargs = {"key\x00": ["\\\\", None, 1.5]}
    message = "bad \x00 byte \udcff and \\ backslash"
    assert (
        await capture(db, redis, _record(_raised(lambda: ValueError(message)), args, kwargs), None)
        == "stored"
    )
    assert (
        await capture(db, redis, _record(_raised(lambda: ValueError("big")), ["q" * (3 * MB)], {}), None)
        == "stored"
    )
    escaped_id, omitted_id = [
        row["id"]
        for row in await clean_db.fetch("SELECT id FROM dead_letter_queue ORDER BY error_message = 'big'")
    ]
    headers = {"Authorization": f"Bearer {token}"}
    async with running_app(keyed) as (_, client):
        detail = (await client.get(f"{BASE}/{escaped_id}", headers=headers)).json()
        assert detail["content_escaped"] is True
        assert unescape_text(detail["error_message"]) == message
        listed = (await client.get(BASE, headers=headers)).json()["items"]
        assert {item["content_escaped"] for item in listed} == {True, False}
        retried = await client.post(f"{BASE}/{escaped_id}/retry", headers=headers)
        assert retried.status_code == 202, retried.text
        refused = await client.post(f"{BASE}/{omitted_id}/retry", headers=headers)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_retryable"
        assert "over the" in refused.json()["error"]["message"]
    info = await Job(retried.json()["job_id"], redis, _queue_name=QUEUE, _deserializer=deserialize_job).info()
    assert info is not None
    replay_kwargs = {k: v for k, v in info.kwargs.items() if not k.startswith("_")}
    print(f"\nretried job carries args={info.args!r} kwargs={replay_kwargs!r}")
    assert list(info.args) == args and replay_kwargs == kwargs


# -- refused records ---------------------------------------------------------------------------
def _plain_record(job_id: str, **overrides: Any) -> FailureRecord:
    values: dict[str, Any] = {
        "queue": QUEUE,
        "job_id": job_id,
        "function": "send_email",
        "args": [1],
        "kwargs": {},
        "error_type": "ValueError",
        "error_message": "boom",
        "stack_trace": "",
        "fingerprint": "fp-refused",
        "attempts": 1,
        "reason": "permanent",
        "failed_at": datetime.now(UTC),
    }
    return FailureRecord(**(values | overrides))


async def test_a_refused_record_never_blocks_the_spool_and_stays_visible(
    settings: Settings, clean_db: Any, redis: Any
) -> None:
    keyed = dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())
    assert keyed.mfa_encryption_key
    payloads = [
        _plain_record("spooled-ok-1").to_json(),
        _plain_record("spooled-refused", reason="not-a-reason", args=["r" * 100_000]).to_json(),  # CHECK
        b"{not json",
        _plain_record("spooled-ok-2").to_json(),
    ]
    await redis.rpush(DLQ_SPOOL_KEY, *payloads)
    metrics = Metrics()
    result = await drain_spool(clean_db, redis, metrics)
    print(f"\ndrain: {result}")
    assert (result.inserted, result.rejected, result.unreadable) == (2, 1, 1)
    assert await redis.llen(DLQ_SPOOL_KEY) == 0
    stored = {r["job_id"] for r in await clean_db.fetch("SELECT job_id FROM dead_letter_queue")}
    assert stored == {"spooled-ok-1", "spooled-ok-2"}

    # capture's own path: Postgres refuses (a NUL in text, built without failure_records), the record
    # is parked, not spooled, and the next capture is stored as usual
    db = Database.from_pool(settings, clean_db)
    refused = _plain_record("captured-refused", error_message="nul \x00 here")
    assert await capture(db, redis, refused, metrics) == "rejected"
    assert await capture(db, redis, _plain_record("captured-after"), metrics) == "stored"
    assert await redis.llen(DLQ_SPOOL_KEY) == 0
    total, entries = await newest_rejected(redis)
    assert total == 3 == await redis.llen(DLQ_SPOOL_REJECTED_KEY)
    assert entries[0]["record"]["job_id"] == "captured-refused"
    print("rejected:", [(e["error"][:70], str(e["record"])[:40]) for e in entries])

    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    async with running_app(keyed) as (_, client):
        listed = await client.get(f"{BASE}/rejected", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200, listed.text
        assert listed.json()["total"] == 3 and "CheckViolation" in orjson.dumps(listed.json()).decode()
        big = [item for item in listed.json()["items"] if item.get("record_truncated")]
        assert [item["record"]["job_id"] for item in big] == ["spooled-refused"]
        assert "args" not in big[0]["record"] and len(listed.content) < 64 * 1024
        scrape = (await client.get("/metrics")).text
    gauge = [line for line in scrape.splitlines() if line.startswith("fmhl_dlq_spool_rejected")]
    print("metric:", gauge)
    assert gauge == ["fmhl_dlq_spool_rejected 3"]

"""Group commit: concurrent captures share statements, each learns its own outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.dlq.capture import FailureRecord
from shared.dlq.group_commit import committer_for
from shared.infra.config import load_settings
from shared.infra.db import Database


def _record(job_id: str, **overrides: Any) -> FailureRecord:
    base = FailureRecord(
        queue="email_send",
        job_id=job_id,
        function="send_email",
        args=[],
        kwargs={"to": "a@b.c", "n": job_id},
        error_type="ValueError",
        error_message=f"bad {job_id}",
        stack_trace="Traceback ...",
        fingerprint="fp-gc",
        attempts=1,
        reason="permanent",
        failed_at=datetime.now(UTC),
    )
    return dataclasses.replace(base, **overrides)


async def test_concurrent_captures_are_batched_and_each_settled(clean_db: Any) -> None:
    db = Database.from_pool(load_settings({}), clean_db)
    committer = committer_for(db)
    records = [_record(f"gc-{n}") for n in range(300)]
    duplicates = [_record("gc-7"), _record("gc-8")]
    results = await asyncio.gather(*(committer.store(r) for r in records + duplicates))
    stored = [r for r in results[:300] if isinstance(r, uuid.UUID)]
    assert len(stored) == 300 and results[300:] == [None, None]
    assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 300
    assert committer.statements <= 5, f"{committer.statements} statements for 302 concurrent captures"
    again = await committer.store(_record("gc-1"))
    assert again is None, "a job captured before is a duplicate"
    print(f"302 concurrent captures in {committer.statements} statements; 2 duplicates settled as None")


async def test_a_refused_record_does_not_take_its_batch_down(clean_db: Any) -> None:
    db = Database.from_pool(load_settings({}), clean_db)
    committer = committer_for(db)
    good = [_record(f"ok-{n}") for n in range(20)]
    bad = _record("bad-1", reason="not-a-reason")  # violates the reason CHECK
    outcomes = await asyncio.gather(*(committer.store(r) for r in [*good, bad]), return_exceptions=True)
    assert all(isinstance(o, uuid.UUID) for o in outcomes[:20])
    assert isinstance(outcomes[20], Exception)
    assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 20
    with pytest.raises(Exception):  # noqa: B017 - any database refusal reaches the caller
        await committer.store(dataclasses.replace(bad, job_id="bad-2"))


async def test_a_storm_of_spread_out_captures_shares_statements(clean_db: Any) -> None:
    """A storm's failures arrive one by one (each job fails after its own Redis round trips), not
    all in one loop turn: written as they came, they cost nearly a statement each (issue 17 §2).
    While captures are concurrent, a batch waits a few ms for company."""
    db = Database.from_pool(load_settings({}), clean_db)
    committer = committer_for(db)

    async def fail_later(n: int) -> uuid.UUID | None:
        await asyncio.sleep(n * 0.0002)  # 5,000 failures a second, over 40 ms
        return await committer.store(_record(f"spread-{n}"))

    results = await asyncio.gather(*(fail_later(n) for n in range(200)))
    assert all(isinstance(r, uuid.UUID) for r in results)
    assert await clean_db.fetchval("SELECT count(*) FROM dead_letter_queue") == 200
    assert committer.statements <= 15, f"{committer.statements} statements for 200 spread-out captures"
    print(f"200 captures 0.2 ms apart in {committer.statements} statements")


async def test_captures_from_one_caller_in_a_row_do_not_wait(clean_db: Any) -> None:
    """Only concurrency makes a batch wait: one caller capturing again and again (a worker with
    one slot) would wait for company that never comes."""
    db = Database.from_pool(load_settings({}), clean_db)
    committer = committer_for(db)
    for n in range(30):
        assert isinstance(await committer.store(_record(f"row-{n}")), uuid.UUID)
    assert committer.statements == 30 and committer.lingered == 0

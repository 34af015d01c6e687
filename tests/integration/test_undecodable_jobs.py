"""Jobs no codec can read (shared/dlq/raw_preview.py): a foreign producer's pickle and corrupt
bytes left on a queue are captured by a real worker with a bounded base64 preview of the body,
``payload_omitted`` says what the body looked like, the detail API shows both, and a retry
answers 409 ``not_retryable`` naming that reason (it said "expired in Redis" before)."""

from __future__ import annotations

import base64
import pickle
import time
from typing import Any

from shared.dlq.raw_preview import RAW_PREVIEW_BYTES, describe_body
from shared.jobs.queues import EMAIL_SEND
from tests.helpers import assert_error
from tests.integration.test_dlq_api import BASE, DETAIL_FIELDS, Api, api, settings_with_key
from tests.worker_support import job, run_burst

__all__ = ["api", "settings_with_key"]  # fixtures used here

QUEUE = EMAIL_SEND


async def _leave_on_queue(redis: Any, job_id: str, body: bytes) -> None:
    await redis.set(f"arq:job:{job_id}", body)
    await redis.zadd(QUEUE, {job_id: int(time.time() * 1000)})


async def _noop(ctx: dict[str, Any], **kwargs: Any) -> None:
    return None


async def test_pickled_and_corrupt_jobs_keep_a_preview_and_retry_names_the_reason(api: Api) -> None:
    # arq's default serializer: pickle.dumps of the job dict
    pickled = pickle.dumps({"t": 1, "f": "send_email", "a": [], "k": {"to": "a@b.test"}, "et": 1})
    corrupt = bytes(range(256)) * 20  # 5,120 bytes: more than the preview keeps
    await _leave_on_queue(api.redis, "foreign-pickle", pickled)
    await _leave_on_queue(api.redis, "corrupt-bytes", corrupt)
    await run_burst(QUEUE, api.settings, api.pool, api.redis, [job(QUEUE, "send_email", _noop)])

    rows = {r["job_id"]: dict(r) for r in await api.pool.fetch("SELECT * FROM dead_letter_queue")}
    assert set(rows) == {"foreign-pickle", "corrupt-bytes"}
    for job_id, body in (("foreign-pickle", pickled), ("corrupt-bytes", corrupt)):
        row = rows[job_id]
        assert row["reason"] == "permanent" and row["function"] == "<unknown>"
        assert row["error_type"] == "DeserializationError"
        assert row["args"] == [] and row["kwargs"] == {}
        assert len(row["raw_preview"]) <= 4096
        assert base64.b64decode(row["raw_preview"]) == body[:RAW_PREVIEW_BYTES]
        assert f"{len(body):,} bytes" in row["payload_omitted"]
    assert "Python pickle" in rows["foreign-pickle"]["payload_omitted"]
    assert "binary data" in rows["corrupt-bytes"]["payload_omitted"]
    assert "first 3,072 bytes" in rows["corrupt-bytes"]["payload_omitted"]

    entry_id = rows["foreign-pickle"]["id"]
    detail = (await api.get(f"{BASE}/{entry_id}")).json()
    assert set(detail) == DETAIL_FIELDS
    assert detail["raw_preview"] == rows["foreign-pickle"]["raw_preview"]
    assert "Python pickle" in detail["payload_omitted"]

    for row in rows.values():
        response = await api.post(f"{BASE}/{row['id']}/retry")
        assert_error(response, 409, "not_retryable")
        message = response.json()["error"]["message"]
        assert "could not be decoded" in message and "expired" not in message


def test_describe_body_tells_the_shapes_apart() -> None:
    assert "pickle" in describe_body(pickle.dumps({"f": "x"}, protocol=2))
    assert "pickle" in describe_body(pickle.dumps({"f": "x"}))
    assert "not an arq job" in describe_body(b'{"hello": 1}')
    assert "text that is not JSON" in describe_body(b"hello")
    assert "binary data" in describe_body(b"\xff\xfe\x00")

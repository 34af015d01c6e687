"""Jobs no codec can read: keep a bounded preview of the raw body and say why it is there.

A job left on one of our queues by a foreign producer (arq's default serializer is pickle) or
with corrupt bytes fails in arq before any function runs (``DeserializationError``). Its body
was thrown away and the DLQ row said nothing about it, so a retry answered "expired in Redis",
which is not what happened. Now, before arq deletes the job, the silent path reads the body once
and the row keeps:

* ``raw_preview``: base64 of the first ``RAW_PREVIEW_BYTES`` bytes (3,072 → at most 4,096
  characters), never decoded (unpickling a foreign body would run its code);
* ``payload_omitted``: what the body looks like (a Python pickle, JSON that is not an arq job,
  text that is not JSON, binary), its size, and that the preview is all that is kept.

Such an entry is not retryable: the retry's 409 ``not_retryable`` quotes ``payload_omitted``.
"""

from __future__ import annotations

import base64
import dataclasses

import orjson
from arq.constants import job_key_prefix
from redis.exceptions import RedisError

from shared.dlq.capture import FailureRecord
from shared.infra.redis import RedisClient

RAW_PREVIEW_BYTES = 3072  # base64 of 3,072 bytes is 4,096 characters: the 4 KiB bound

# pickle protocols 2-5 start with PROTO (0x80) and the protocol number
_PICKLE_PROTOCOLS = {bytes([0x80, n]) for n in range(2, 6)}


def describe_body(raw: bytes) -> str:
    """What an undecodable job body looks like (never decoded beyond a JSON parse)."""
    if raw[:2] in _PICKLE_PROTOCOLS:
        return "a Python pickle (arq's default serializer; its producer does not use fmhl-ops' JSON codec)"
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return "binary data that is neither JSON nor a pickle (corrupt bytes)"
        return "text that is not JSON (corrupt bytes)"
    return "JSON that is not an arq job (no function, args, kwargs, try, enqueue time)"


def undecodable_payload(raw: bytes) -> tuple[str, str]:
    """(``payload_omitted``, ``raw_preview``) for a job body no codec could read."""
    kept = raw[:RAW_PREVIEW_BYTES]
    cut = "" if len(kept) == len(raw) else f" (first {len(kept):,} bytes)"
    omitted = (
        f"the job body could not be decoded: {describe_body(raw)}; {len(raw):,} bytes, kept only as a "
        f"base64 preview{cut} in raw_preview"
    )
    return omitted, base64.b64encode(kept).decode("ascii")


async def with_raw_preview(redis: RedisClient, job_id: str, record: FailureRecord) -> FailureRecord:
    """``record`` with the preview of the job's body, read from arq's job key (still there: arq
    deletes it after the silent path). A body gone meanwhile, or Redis not answering, leaves the
    record as it was: the capture goes on without the preview."""
    try:
        raw = await redis.get(job_key_prefix + job_id)
    except (RedisError, OSError, TimeoutError):
        return record
    if not raw:
        return record
    omitted, preview = undecodable_payload(bytes(raw))
    return dataclasses.replace(record, args=[], kwargs={}, payload_omitted=omitted, raw_preview=preview)

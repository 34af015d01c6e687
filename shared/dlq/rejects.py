"""DLQ records Postgres *refused* (not: could not be reached), kept where an operator sees them.

A refusal is Postgres (or asyncpg encoding the parameters) answering "no" to this record: a data
exception, a constraint, a size limit, a column that does not exist yet. Retrying the same
record cannot help, so it must never sit at the head of the spool blocking every record behind
it. It goes to the Redis list ``fmhl:dlq:spool:rejected`` (newest last) as
``{"rejected_at", "error", "record"}`` and stays there until an operator acts:

* the service exports its length as ``fmhl_dlq_spool_rejected`` (alert ``DLQSpoolRejected``);
* ``GET /api/v1/admin/queues/dlq/rejected`` lists the newest ones with the refusal;
* the record itself is the spool's JSON, replayable once the cause is fixed.

Not a refusal either: a prepared-statement error (``shared.infra.db.STATEMENT_STATE_ERRORS``, a
statement cache behind PgBouncer), which is about the connection, not the record.

Anything that is not clearly an outage counts as a refusal: an unknown error should park one
record, not stall the whole spool.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from shared.infra.db import STATEMENT_STATE_ERRORS
from shared.infra.errors import DependencyUnavailable
from shared.infra.redis import DLQ_SPOOL_REJECTED_KEY, RedisClient

# SQLSTATE classes that mean "not now" rather than "not this": connection exception, insufficient
# resources, operator intervention (shutdown, cancel), transaction rollback (serialization,
# deadlock), system error.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "40", "58"})
MAX_LISTED = 100
MAX_LISTED_BYTES = 64 * 1024
_BULKY_FIELDS = frozenset({"args", "kwargs", "stack_trace", "extra"})
MAX_ERROR_TEXT = 2000


def is_refusal(exc: BaseException) -> bool:
    """True when ``exc`` says the record is unacceptable, False when Postgres was unreachable."""
    if isinstance(exc, OSError | TimeoutError | DependencyUnavailable | asyncpg.PostgresConnectionError):
        return False
    if isinstance(exc, asyncpg.InternalClientError):
        # a connection left mid-operation by a Postgres restart (seen in the chaos test): the
        # server went away, the record did nothing wrong
        return False
    if isinstance(exc, STATEMENT_STATE_ERRORS):
        # a prepared statement of the connection (a statement cache behind a transaction-mode
        # pooler), not the record: the same record is stored once the connection or the
        # configuration is right, so it waits in the spool like an outage
        return False
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] not in _TRANSIENT_SQLSTATE_CLASSES
    if isinstance(exc, asyncpg.InterfaceError):  # closed connection, closing pool ...
        return isinstance(exc, ValueError)  # ... except asyncpg's "invalid input for query argument"
    return not isinstance(exc, asyncio.CancelledError)


def describe(exc: BaseException) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:
        text = type(exc).__name__
    return text[:MAX_ERROR_TEXT]


def rejected_entry(record_json: bytes, error: str) -> bytes:
    return orjson.dumps(
        {
            "rejected_at": datetime.now(UTC).isoformat(),
            "error": error,
            "record": orjson.Fragment(record_json),
        }
    )


async def reject(redis: RedisClient, record_json: bytes, error: str) -> None:
    """Park one refused record (raises if Redis fails: the caller falls back to the log)."""
    await redis.rpush(DLQ_SPOOL_REJECTED_KEY, rejected_entry(record_json, error))


async def rejected_count(redis: RedisClient) -> int:
    return int(await redis.llen(DLQ_SPOOL_REJECTED_KEY))


async def newest_rejected(redis: RedisClient, limit: int = MAX_LISTED) -> tuple[int, list[dict[str, Any]]]:
    """(total, the newest ``limit`` entries, newest first)."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(DLQ_SPOOL_REJECTED_KEY)
    pipe.lrange(DLQ_SPOOL_REJECTED_KEY, -limit, -1)
    total, raw = await pipe.execute()
    entries: list[dict[str, Any]] = []
    for payload in reversed(raw):
        try:
            entry = orjson.loads(payload)
        except orjson.JSONDecodeError:
            entry = {"rejected_at": None, "error": "unreadable entry", "record": None}
        if not isinstance(entry, dict):
            entry = {"record": entry}
        record = entry.get("record")
        if len(payload) > MAX_LISTED_BYTES and isinstance(record, dict):
            # a listing stays small: the payload and trace of a big record are in Redis, not here
            entry["record"] = {k: v for k, v in record.items() if k not in _BULKY_FIELDS}
            entry["record_truncated"] = True
        entries.append(entry)
    return int(total), entries

"""Live jobs of a queue by state: what is queued, scheduled, waiting for a retry, or running.

States (one per job, decided in this order):

* ``running``: arq's in-progress key exists (a worker took it). Which worker and since when come
  from the workers' heartbeats (``running`` field, about a second behind);
* ``retrying``: its last try raised a transient error and it waits for the next one (the failure
  decorator indexed it in ``fmhl:retrying:{queue}`` with try n of max and the last error);
* ``scheduled``: deferred to a future time (queue score > now), never tried;
* ``queued``: ready now (score <= now).

Paging is keyset over a sorted set, never a keyspace ``SCAN`` and never arq's ``queued_jobs()``:
queued and scheduled walk the queue zset by (score, job id) from the ``now`` boundary, retrying
walks the retrying index, running reads the heartbeats (at most workers x ``max_jobs`` items).
A Lua script walks the set from the cursor and keeps the members in the wanted state (a running
job sits in the queue zset too; retrying and scheduled jobs share score ranges), so a page is one
round trip whatever lies in between; it examines at most ``MAX_SCAN`` members, so a page may come
back shorter than ``limit``, with a cursor to continue. The script returns each kept job's keys
(definition, try counter, last error, score) with it: a page is one round trip.
The cursor is opaque (base64 JSON of the last (score, job id) examined), so a job finishing
between two pages neither repeats nor skips others.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

import orjson
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from shared.infra.errors import Invalid, NotFound
from shared.infra.redis import JOB_LAST_ERROR_KEY_PREFIX, RedisClient, job_last_error_key, retrying_index_key
from shared.jobs.catalogue import jobs_on
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import CORRELATION_KWARG, JOB_QUEUES, RESERVED_KWARGS
from shared.jobs.retry_trace import LastError

JobState = Literal["queued", "scheduled", "retrying", "running"]
JOB_STATES: Final[tuple[str, ...]] = get_args(JobState)
LIST_PREVIEW_CHARS = 200
DETAIL_PREVIEW_CHARS = 4096
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class LiveJob:
    job_id: str
    queue: str
    state: str
    function: str
    args_preview: str
    enqueued_at: datetime | None
    correlation_id: str | None
    # tries started so far (a running job: the one it runs now)
    tries: int
    max_tries: int | None
    # queued: when it became due; scheduled/retrying: when it is due; running: None
    next_attempt_at: datetime | None
    last_error: LastError | None = None
    worker_id: str | None = None
    started_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class LivePage:
    items: tuple[LiveJob, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class _Cursor:
    score: float
    job_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(orjson.dumps([self.score, self.job_id])).decode().rstrip("=")

    @classmethod
    def decode(cls, raw: str) -> _Cursor:
        try:
            score, job_id = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            if isinstance(score, int | float) and not isinstance(score, bool) and isinstance(job_id, str):
                return cls(float(score), job_id)
        except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
            pass
        raise Invalid("cursor is not one this API returned", code="invalid_cursor")


def check_queue(queue: str) -> None:
    if queue not in JOB_QUEUES:
        raise Invalid(
            f"unknown queue {queue!r}; expected one of {', '.join(JOB_QUEUES)}", code="unknown_queue"
        )


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", code="invalid_limit")
    return limit


def _ms_to_dt(ms: float | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def _default_max_tries(queue: str, policies: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    return {
        spec.name: int(policies.get(spec.name, {}).get("max_tries", spec.policy.max_tries))
        for spec in jobs_on(queue)
    }


def _preview(value: Any, limit: int) -> str:
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class _Keys:
    """The per-job keys of one job, as one pipeline returned them."""

    definition: bytes | None
    tries: int
    in_progress: bool
    retrying: bool
    last_error: LastError | None
    score: float | None = None  # in the queue zset; None once the job left the queue


async def _read_keys(redis: RedisClient, queue: str, job_ids: Sequence[str]) -> list[_Keys]:
    if not job_ids:
        return []
    index = retrying_index_key(queue)
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.get(job_key_prefix + job_id)
        pipe.get(retry_key_prefix + job_id)
        pipe.exists(in_progress_key_prefix + job_id)
        pipe.zscore(index, job_id)
        pipe.get(job_last_error_key(job_id))
        pipe.zscore(queue, job_id)
    replies = await pipe.execute()
    keys = []
    for n in range(len(job_ids)):
        definition, tries, in_progress, retrying, last_error, score = replies[n * 6 : n * 6 + 6]
        keys.append(
            _Keys(
                definition=definition,
                tries=int(tries or 0),
                in_progress=bool(in_progress),
                retrying=retrying is not None,
                last_error=LastError.decode(last_error) if last_error else None,
                score=float(score) if score is not None else None,
            )
        )
    return keys


def _state_of(keys: _Keys, score: float, now_ms: float) -> str:
    if keys.in_progress:
        return "running"
    if keys.retrying and keys.tries > 0:
        return "retrying"
    return "scheduled" if score > now_ms else "queued"


def _build(
    queue: str,
    job_id: str,
    score: float | None,
    keys: _Keys,
    state: str,
    max_tries: Mapping[str, int],
    preview_chars: int,
    running: Mapping[str, tuple[str, float]],
) -> LiveJob:
    function, preview, enqueued_at, correlation_id = "<expired>", "", None, None
    if keys.definition is not None:
        try:
            data: dict[str, Any] = orjson.loads(keys.definition)
            function = str(data.get("f"))
            kwargs = data.get("k") or {}
            if isinstance(kwargs, dict):
                correlation_id = kwargs.get(CORRELATION_KWARG)
                kwargs = {k: v for k, v in kwargs.items() if k not in RESERVED_KWARGS}
            preview = _preview({"args": data.get("a") or [], "kwargs": kwargs}, preview_chars)
            enqueued_at = _ms_to_dt(data.get("et"))
        except (ValueError, TypeError, AttributeError):
            function, preview = (
                "<undecodable>",
                _preview(keys.definition[:preview_chars].decode(errors="replace"), preview_chars),
            )
    worker_id, started = running.get(job_id, (None, None))
    last_error = keys.last_error if state in ("retrying", "running") else None
    return LiveJob(
        job_id=job_id,
        queue=queue,
        state=state,
        function=function,
        args_preview=preview,
        enqueued_at=enqueued_at,
        correlation_id=str(correlation_id) if correlation_id else None,
        tries=keys.tries,
        max_tries=last_error.max_tries if last_error else max_tries.get(function),
        next_attempt_at=_ms_to_dt(score) if state != "running" else None,
        last_error=last_error,
        worker_id=worker_id if state == "running" else None,
        started_at=datetime.fromtimestamp(started, UTC) if started and state == "running" else None,
    )


async def _running_by_worker(redis: RedisClient, queue: str) -> dict[str, tuple[str, float]]:
    return {
        job_id: (beat.worker_id, started)
        for beat in await read_heartbeats(redis)
        if beat.queue == queue
        for job_id, started in beat.running
    }


# Walks ``KEYS[1]`` (the queue zset, or the retrying index) in (score, member) order from the
# cursor and keeps the members whose state is ARGV[5], until ARGV[6] are found, ARGV[7] members
# were examined, or a score passes ARGV[2]. Server-side, so a page over a queue whose head is full
# of other states costs one round trip, not one per batch. It reads the per-job keys by name
# (arq's prefixes), which a single Redis (not a cluster) allows.
# KEYS: source, queue, retrying index. ARGV: start rank, high, after score ('' = none), after id,
# state, limit, max scan, now ms, last-error key prefix. Returns {exhausted, last score, last id,
# n found, (id, definition, tries, last error, queue score) per found job..., stale ids...}
# (stale: retrying-index members whose job left the queue). One round trip per page.
_PAGE = """
local source, queue, index = KEYS[1], KEYS[2], KEYS[3]
local high = tonumber(ARGV[2])
local has_after = ARGV[3] ~= ''
local after_score = tonumber(ARGV[3])
local after_id = ARGV[4]
local want, limit, max_scan, now = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rank = tonumber(ARGV[1])
local exact = false
if has_after then
    local r = redis.call('ZRANK', source, after_id)
    local s = redis.call('ZSCORE', source, after_id)
    if r and s and tonumber(s) == after_score then
        rank, exact = r + 1, true
    else
        rank = redis.call('ZCOUNT', source, '-inf', '(' .. ARGV[3])
    end
end
local found, stale = {}, {}
local scanned, exhausted = 0, 1
local last_score, last_id = ARGV[3], after_id
while true do
    local rows = redis.call('ZRANGE', source, rank, rank + 199, 'WITHSCORES')
    if #rows == 0 then break end
    local stop = false
    for i = 1, #rows, 2 do
        local id, score = rows[i], tonumber(rows[i + 1])
        if score > high then stop = true break end
        if exact or not has_after or score > after_score or (score == after_score and id > after_id) then
            scanned = scanned + 1
            last_score, last_id = rows[i + 1], id
            local due = score
            local keep = true
            if source == index then
                local q = redis.call('ZSCORE', queue, id)
                if not q then
                    stale[#stale + 1] = id
                    keep = false
                else
                    due = tonumber(q)
                end
            end
            if keep then
                local state
                if redis.call('EXISTS', 'arq:in-progress:' .. id) == 1 then
                    state = 'running'
                elseif redis.call('ZSCORE', index, id)
                        and tonumber(redis.call('GET', 'arq:retry:' .. id) or '0') > 0 then
                    state = 'retrying'
                elseif due > now then
                    state = 'scheduled'
                else
                    state = 'queued'
                end
                if state == want then
                    found[#found + 1] = id
                    found[#found + 1] = redis.call('GET', 'arq:job:' .. id) or ''
                    found[#found + 1] = redis.call('GET', 'arq:retry:' .. id) or '0'
                    found[#found + 1] = redis.call('GET', ARGV[9] .. id) or ''
                    found[#found + 1] = tostring(due)
                end
            end
            if #found >= limit * 5 or scanned >= max_scan then
                exhausted = 0
                stop = true
                break
            end
        end
    end
    if stop then break end
    rank = rank + #rows / 2
end
local reply = {exhausted, last_score, last_id, #found / 5}
for _, id in ipairs(found) do reply[#reply + 1] = id end
for _, id in ipairs(stale) do reply[#reply + 1] = id end
return reply
"""
MAX_SCAN = 5_000


async def list_live_jobs(
    redis: RedisClient,
    *,
    queue: str,
    state: str,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
    job_policies: Mapping[str, Mapping[str, Any]] | None = None,
    now_ms: float | None = None,
) -> LivePage:
    """One page of ``queue``'s jobs in ``state``, oldest first (by due time; running: by start)."""
    check_queue(queue)
    if state not in JOB_STATES:
        raise Invalid(f"state must be one of {', '.join(JOB_STATES)}", code="invalid_state")
    check_limit(limit)
    after = _Cursor.decode(cursor) if cursor else None
    now = now_ms if now_ms is not None else time.time() * 1000
    max_tries = _default_max_tries(queue, job_policies or {})
    if state == "running":
        return await _running_page(redis, queue, after, limit, max_tries)
    index = retrying_index_key(queue)
    source = index if state == "retrying" else queue
    start_rank = int(await redis.zcount(queue, "-inf", now)) if state == "scheduled" and after is None else 0
    high = now if state == "queued" else float("inf")
    page_script = redis.register_script(_PAGE)  # EVALSHA: the script is sent once per server
    reply = await page_script(
        keys=[source, queue, index],
        args=[
            start_rank,
            repr(high) if high != float("inf") else "1e300",
            repr(after.score) if after else "",
            after.job_id if after else "",
            state,
            limit,
            MAX_SCAN,
            repr(now),
            JOB_LAST_ERROR_KEY_PREFIX,
        ],
    )
    exhausted, last_score, last_id, count = int(reply[0]), reply[1], reply[2], int(reply[3])
    found = reply[4 : 4 + 5 * count]
    stale = reply[4 + 5 * count :]
    if stale:
        await redis.zrem(index, *stale)
    running: dict[str, tuple[str, float]] = {}  # retrying, scheduled, queued: not running
    items = []
    for n in range(count):
        job_id, definition, tries, last_error, score = found[n * 5 : n * 5 + 5]
        keys = _Keys(
            definition=definition or None,
            tries=int(_text(tries) or 0),
            in_progress=False,
            retrying=state == "retrying",
            last_error=LastError.decode(last_error) if last_error else None,
            score=float(_text(score)),
        )
        items.append(
            _build(queue, _text(job_id), keys.score, keys, state, max_tries, LIST_PREVIEW_CHARS, running)
        )
    next_cursor = None
    if not exhausted and last_id:
        next_cursor = _Cursor(float(_text(last_score)), _text(last_id)).encode()
    return LivePage(tuple(items), next_cursor)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _running_page(
    redis: RedisClient, queue: str, after: _Cursor | None, limit: int, max_tries: Mapping[str, int]
) -> LivePage:
    running = await _running_by_worker(redis, queue)
    ordered = sorted(running.items(), key=lambda item: (item[1][1], item[0]))
    if after is not None:
        ordered = [item for item in ordered if (item[1][1], item[0]) > (after.score, after.job_id)]
    ids = [job_id for job_id, _ in ordered[: limit * 2]]
    keys = await _read_keys(redis, queue, ids)
    items = [
        _build(queue, job_id, None, job_keys, "running", max_tries, LIST_PREVIEW_CHARS, running)
        for job_id, job_keys in zip(ids, keys, strict=True)
        if job_keys.in_progress  # the heartbeat is a second behind: the job may have ended
    ][:limit]
    more = len(ordered) > limit and items
    last = items[-1] if items else None
    next_cursor = (
        _Cursor(running[last.job_id][1], last.job_id).encode() if more and last is not None else None
    )
    return LivePage(tuple(items), next_cursor)


async def get_live_job(
    redis: RedisClient,
    *,
    queue: str,
    job_id: str,
    job_policies: Mapping[str, Mapping[str, Any]] | None = None,
    now_ms: float | None = None,
) -> LiveJob:
    """One live job of ``queue`` with a longer preview; ``NotFound`` when it is not (or no longer)
    in the queue: finished jobs are in the DLQ (failed, cancelled, aborted) or gone (succeeded)."""
    check_queue(queue)
    score = await redis.zscore(queue, job_id)
    if score is None:
        raise NotFound(f"no live job {job_id!r} in queue {queue}", code="job_not_found")
    (keys,) = await _read_keys(redis, queue, [job_id])
    now = now_ms if now_ms is not None else time.time() * 1000
    state = _state_of(keys, float(score), now)
    running = await _running_by_worker(redis, queue) if state == "running" else {}
    return _build(
        queue,
        job_id,
        float(score),
        keys,
        state,
        _default_max_tries(queue, job_policies or {}),
        DETAIL_PREVIEW_CHARS,
        running,
    )

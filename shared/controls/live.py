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
Each batch's per-job keys (definition, try counter, in-progress flag, retrying membership, last
error) come back in one pipeline. A batch whose jobs turn out to be in another state (a running
job sits in the queue zset too) is skipped over: a page may come back shorter than ``limit``
after ``MAX_BATCHES`` batches, with a cursor to continue. The cursor is opaque (base64 JSON of the
last (score, job id) seen), so a job finishing between two pages neither repeats nor skips others.
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
from shared.infra.redis import RedisClient, job_last_error_key, retrying_index_key
from shared.jobs.catalogue import jobs_on
from shared.jobs.heartbeat import read_heartbeats
from shared.jobs.queues import CORRELATION_KWARG, JOB_QUEUES, RETRY_OF_KWARG
from shared.jobs.retry_trace import LastError

JobState = Literal["queued", "scheduled", "retrying", "running"]
JOB_STATES: Final[tuple[str, ...]] = get_args(JobState)
LIST_PREVIEW_CHARS = 200
DETAIL_PREVIEW_CHARS = 4096
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_BATCHES = 5
_RESERVED_KWARGS = (CORRELATION_KWARG, RETRY_OF_KWARG)


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
    replies = await pipe.execute()
    keys = []
    for n in range(len(job_ids)):
        definition, tries, in_progress, retrying, last_error = replies[n * 5 : n * 5 + 5]
        keys.append(
            _Keys(
                definition=definition,
                tries=int(tries or 0),
                in_progress=bool(in_progress),
                retrying=retrying is not None,
                last_error=LastError.decode(last_error) if last_error else None,
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
                kwargs = {k: v for k, v in kwargs.items() if k not in _RESERVED_KWARGS}
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
    source = retrying_index_key(queue) if state == "retrying" else queue
    low, high = {"queued": ("-inf", now), "scheduled": (f"({now}", "+inf"), "retrying": ("-inf", "+inf")}[
        state
    ]
    running = await _running_by_worker(redis, queue) if state == "retrying" else {}
    items: list[LiveJob] = []
    position = after
    for _ in range(MAX_BATCHES):
        batch = await _zset_batch(redis, source, low, high, position, limit)
        if not batch:
            return LivePage(tuple(items), None)
        ids = [job_id for job_id, _ in batch]
        keys = await _read_keys(redis, queue, ids)
        scores = await _queue_scores(redis, queue, ids) if state == "retrying" else [s for _, s in batch]
        stale = []
        for (job_id, index_score), job_keys, score in zip(batch, keys, scores, strict=True):
            position = _Cursor(index_score, job_id)
            if score is None:  # retrying index member whose job finished since: prune it
                stale.append(job_id)
                continue
            if _state_of(job_keys, score, now) != state:
                continue
            items.append(
                _build(queue, job_id, score, job_keys, state, max_tries, LIST_PREVIEW_CHARS, running)
            )
            if len(items) == limit:
                return LivePage(tuple(items), position.encode())
        if stale:
            await redis.zrem(source, *stale)
        if len(batch) < limit:
            return LivePage(tuple(items), None)
    return LivePage(tuple(items), position.encode() if position else None)


async def _queue_scores(redis: RedisClient, queue: str, job_ids: Sequence[str]) -> list[float | None]:
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.zscore(queue, job_id)
    return [float(s) if s is not None else None for s in await pipe.execute()]


async def _zset_batch(
    redis: RedisClient, key: str, low: Any, high: Any, after: _Cursor | None, count: int
) -> list[tuple[str, float]]:
    """Up to ``count`` members after ``after`` in (score, member) order within [low, high].

    Fast path: the cursor's member is still there with its score, so the next members start at
    its rank + 1 (``ZRANK`` is O(log n)). Otherwise (it left the set, or moved) fall back to the
    score: members with the same score and a greater id, then members with a greater score.
    """
    if after is None:
        rows = await redis.zrangebyscore(key, low, high, start=0, num=count, withscores=True)
        return [(m.decode(), float(s)) for m, s in rows]
    pipe = redis.pipeline(transaction=False)
    pipe.zrank(key, after.job_id)
    pipe.zscore(key, after.job_id)
    rank, score = await pipe.execute()
    if rank is not None and score is not None and float(score) == after.score:
        rows = await redis.zrange(key, rank + 1, rank + count, withscores=True)
        limit_high = float("inf") if high == "+inf" else float(high)
        return [(m.decode(), float(s)) for m, s in rows if float(s) <= limit_high]
    pipe = redis.pipeline(transaction=False)
    pipe.zrangebyscore(key, after.score, after.score, start=0, num=count * 4, withscores=True)
    pipe.zrangebyscore(key, f"({after.score}", high, start=0, num=count, withscores=True)
    same, greater = await pipe.execute()
    rows = [(m.decode(), float(s)) for m, s in same if m.decode() > after.job_id]
    rows += [(m.decode(), float(s)) for m, s in greater]
    return rows[:count]


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

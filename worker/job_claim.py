"""Claiming a queued job for this worker in one Redis round trip.

arq 0.28's ``Worker.start_jobs`` claims each job with ``WATCH`` on its in-progress key, ``EXISTS``,
``ZSCORE`` and a ``MULTI``/``PSETEX``/``EXEC``: four round trips, one after another, inside the poll
loop, for every job. In a failure storm that serial walk is what the worker spends its time on
(``py-spy``: socket writes to Redis were the largest share of the process, issue 17 §2), and
every job waits its turn behind it.

``claim_job`` does the same check-and-set as one Lua script, which Redis runs atomically: the job
is claimed (its in-progress key set, for as long as arq would set it) only if no worker holds it
and it is still queued and due. Same keys, same TTL, same outcome as arq's transaction, so workers
of either kind can share a queue; a lost race is a ``None``, as arq's ``WatchError`` is a skip.
"""

from __future__ import annotations

from typing import Any

from arq.constants import in_progress_key_prefix

# KEYS[1] in-progress key, KEYS[2] queue zset; ARGV[1] job id, ARGV[2] now (ms), ARGV[3] TTL (ms)
CLAIM_JOB_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return score
"""


class JobClaimer:
    """``claim_job`` bound to one Redis client (the script is loaded once, then run by SHA)."""

    def __init__(self, redis: Any, queue: str, in_progress_ttl_ms: int) -> None:
        self._script = redis.register_script(CLAIM_JOB_SCRIPT)
        self._queue = queue
        self._ttl_ms = in_progress_ttl_ms

    async def claim(self, job_id: str, now_ms: int) -> int | None:
        """The job's queue score if this worker now holds it; ``None`` if it is running elsewhere,
        finished, or not due yet (deferred)."""
        score = await self._script(
            keys=[in_progress_key_prefix + job_id, self._queue], args=[job_id, now_ms, self._ttl_ms]
        )
        return None if score is None else int(float(score))

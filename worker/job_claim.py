"""``ClaimingWorker``: arq's ``Worker`` that claims a queued job in one Redis round trip.

arq 0.28's ``Worker.start_jobs`` claims each job with ``WATCH`` on its in-progress key, ``EXISTS``,
``ZSCORE`` and a ``MULTI``/``PSETEX``/``EXEC``: four round trips, one after another, inside the poll
loop, for every job. In a failure storm that serial walk is where the worker's time went (py-spy:
socket writes to Redis were the largest share of the process, issue 17 §2), and every job waited
its turn behind it.

Here the same check-and-set is one Lua script, which Redis runs atomically: the job is claimed
(its in-progress key set, for as long as arq sets it) only if no worker holds it and it is still
queued and due. Same keys, same TTL, same outcome as arq's transaction, so workers of either kind
can share a queue; a lost race is a skip, as arq's ``WatchError`` is. Jobs this process is
running are skipped without any Redis call (arq keeps a job in the queue until it ends, so the
head a poll reads is mostly those).

Slots behave as in arq: one is taken (semaphore + ``job_counter``) before the claim, given back
when the claim finds nothing to run, held by the job it starts; a Redis error during the claim
propagates with the slot still taken, as arq's does (``FmhlWorker.start_jobs`` gives it back).
"""

from __future__ import annotations

from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker

# KEYS[1] in-progress key, KEYS[2] queue zset; ARGV[1] job id, ARGV[2] now (ms), ARGV[3] TTL (ms)
CLAIM_JOB_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return score
"""


class JobClaimer:
    """The claim script bound to one Redis client (loaded once, then run by its SHA)."""

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


class ClaimingWorker(Worker):
    _claimer: JobClaimer | None = None

    @property
    def claimer(self) -> JobClaimer:
        if self._claimer is None:  # not in __init__: arq may dial its own pool in ``main``
            ttl_ms = int(self.in_progress_timeout_s * 1000)
            self._claimer = JobClaimer(self.pool, self.queue_name, ttl_ms)
        return self._claimer

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """For each due job id not running here: take a slot, claim the job, start it."""
        for job_id_b in job_ids:
            job_id = job_id_b.decode()
            running = self.tasks.get(job_id)
            if running is not None and not running.done():
                continue
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            score = await self.claimer.claim(job_id, timestamp_ms())
            if score is None:  # running elsewhere, finished, or deferred
                self._release_sem_dec_counter_on_complete()
                continue
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

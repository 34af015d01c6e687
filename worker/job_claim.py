"""``ClaimingWorker``: arq's ``Worker`` that claims queued jobs in one Redis round trip.

arq 0.28's ``Worker.start_jobs`` claims each job with ``WATCH`` on its in-progress key, ``EXISTS``,
``ZSCORE`` and a ``MULTI``/``PSETEX``/``EXEC``: four round trips, one after another, inside the poll
loop, for every job. In a failure storm that serial walk is where the worker's time went (py-spy:
socket writes to Redis were the largest share of the process, issue 17 §2), and every job waited
its turn behind it.

Here the same check-and-set is one Lua script, which Redis runs atomically: a job is claimed
(its in-progress key set, for as long as arq sets it) only if no worker holds it and it is still
queued and due. Same keys, same TTL, same outcome as arq's transaction, so workers of either
kind can share a queue; a lost race is a skip, as arq's ``WatchError`` is. One call claims as
many jobs as there are free slots: in a storm, jobs end in bursts (their DLQ rows are committed
together) and free their slots together. Jobs this process is running are skipped without any
Redis call (arq keeps a job in the queue until it ends, so the head a poll reads is mostly those).

Slots behave as in arq: one is taken (semaphore + ``job_counter``) per job before the claim,
given back when the claim finds nothing to run, held by the job it starts; a Redis error during
the claim propagates with one slot still taken, as arq's does (``FmhlWorker.start_jobs`` gives
it back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker

# KEYS[1] queue zset, KEYS[2..n] the jobs' in-progress keys; ARGV[1] now (ms), ARGV[2] TTL (ms),
# ARGV[3..n+1] the job ids. One reply per job: its score if claimed, else nil.
CLAIM_JOBS_SCRIPT = """
local claimed = {}
for i = 2, #KEYS do
    local score = false
    if redis.call('EXISTS', KEYS[i]) == 0 then
        score = redis.call('ZSCORE', KEYS[1], ARGV[i + 1])
        if score and tonumber(score) <= tonumber(ARGV[1]) then
            redis.call('SET', KEYS[i], '1', 'PX', ARGV[2])
        else
            score = false
        end
    end
    claimed[#claimed + 1] = score
end
return claimed
"""


class JobClaimer:
    """The claim script bound to one Redis client (loaded once, then run by its SHA)."""

    def __init__(self, redis: Any, queue: str, in_progress_ttl_ms: int) -> None:
        self._script = redis.register_script(CLAIM_JOBS_SCRIPT)
        self._queue = queue
        self._ttl_ms = in_progress_ttl_ms

    async def claim_many(self, job_ids: Sequence[str], now_ms: int) -> list[int | None]:
        """Per job, its queue score if this worker now holds it; ``None`` if it is running
        elsewhere, finished, or not due yet (deferred). One round trip for all of them."""
        keys = [self._queue, *(in_progress_key_prefix + job_id for job_id in job_ids)]
        scores = await self._script(keys=keys, args=[now_ms, self._ttl_ms, *job_ids])
        return [None if score is None else int(float(score)) for score in scores]

    async def claim(self, job_id: str, now_ms: int) -> int | None:
        (score,) = await self.claim_many([job_id], now_ms)
        return score


class ClaimingWorker(Worker):
    _claimer: JobClaimer | None = None

    @property
    def claimer(self) -> JobClaimer:
        if self._claimer is None:  # not in __init__: arq may dial its own pool in ``main``
            ttl_ms = int(self.in_progress_timeout_s * 1000)
            self._claimer = JobClaimer(self.pool, self.queue_name, ttl_ms)
        return self._claimer

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Walk the ids read by a poll: take every free slot, one per next job not running here,
        claim those jobs in one round trip, start what was claimed and give back the other slots;
        with no slot free, wait for a running job to end (as arq waits on its semaphore)."""
        pending = [job_id.decode() for job_id in job_ids]
        pending = [job_id for job_id in pending if not self._running_here(job_id)]
        position = 0
        while position < len(pending):
            if not await self.may_start_jobs():  # a walk can outlast a stop or a pause
                return
            free = min(self.max_jobs - self.job_counter, len(pending) - position)
            if free <= 0:
                running = [task for task in self.tasks.values() if not task.done()]
                if not running:
                    return
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            for _ in range(free):
                await self.sem.acquire()  # free slots: returns at once
            self.job_counter += free
            chunk = pending[position : position + free]
            position += free
            try:
                scores = await self.claimer.claim_many(chunk, timestamp_ms())
            except BaseException:
                for _ in range(free - 1):  # as arq's: the caller gives back the last slot
                    self._release_sem_dec_counter_on_complete()
                raise
            for job_id, score in zip(chunk, scores, strict=True):
                if score is None:  # running elsewhere, finished, or deferred
                    self._release_sem_dec_counter_on_complete()
                    continue
                task = self.loop.create_task(self.run_job(job_id, score))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = task

    async def may_start_jobs(self) -> bool:
        """Asked before each claim of a walk, which (waiting for slots) can last long: once arq
        stops picking jobs (SIGTERM), none is started. Subclasses add their own gates."""
        return self.allow_pick_jobs

    def _running_here(self, job_id: str) -> bool:
        task = self.tasks.get(job_id)
        return task is not None and not task.done()

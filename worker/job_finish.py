"""``FinishBatchingWorker``: jobs that end together are finished in one Redis transaction.

arq 0.28 ends every job with a ``MULTI``/``EXEC`` of its own (result stored, job and retry keys
deleted, job removed from the queue, in-progress key dropped). In a failure storm jobs end in
bursts, all released at once by the group commit of their DLQ rows (``shared.dlq.group_commit``),
and each burst paid one round trip per job; the socket writes were the largest share of a storm
worker's profile (issue 17 §2). Here the jobs that end in the same turn of the event loop, or
while a previous batch is being written, share one transaction: the same commands as arq's, for
each job, in one ``MULTI``/``EXEC``. Each ``finish_job`` still returns only once its own job's
commands are executed, and raises what the transaction raised (arq calls it under
``asyncio.shield``, so a job cancelled meanwhile does not cancel its finishing).

The order that protects a failure is unchanged: a job's DLQ row is committed (or spooled) before
its job function returns, and ``finish_job`` (which acknowledges the job) comes after that.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import to_ms
from arq.worker import Worker

MAX_FINISH_BATCH = 500


@dataclass(frozen=True, slots=True)
class Finish:
    """The arguments of arq's ``Worker.finish_job`` for one job."""

    job_id: str
    finish: bool
    result_data: bytes | None
    result_timeout_s: float | None
    keep_result_forever: bool
    incr_score: int | None
    keep_in_progress: float | None


def queue_finish(tr: Any, queue: str, item: Finish) -> None:
    """arq 0.28's ``finish_job`` commands for one job, added to the transaction ``tr``."""
    delete_keys = []
    in_progress_key = in_progress_key_prefix + item.job_id
    if item.keep_in_progress is None:
        delete_keys.append(in_progress_key)
    else:
        tr.pexpire(in_progress_key, to_ms(item.keep_in_progress))
    if item.finish:
        if item.result_data:
            expire = None if item.keep_result_forever else item.result_timeout_s
            tr.set(result_key_prefix + item.job_id, item.result_data, px=to_ms(expire))
        delete_keys += [retry_key_prefix + item.job_id, job_key_prefix + item.job_id]
        tr.zrem(abort_jobs_ss, item.job_id)
        tr.zrem(queue, item.job_id)
    elif item.incr_score:
        tr.zincrby(queue, item.incr_score, item.job_id)
    if delete_keys:
        tr.delete(*delete_keys)


class FinishBatchingWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._finishes: list[tuple[Finish, asyncio.Future[None]]] = []
        self._finisher: asyncio.Future[None] | None = None
        self.finish_transactions = 0  # for tests and benchmarks

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        item = Finish(
            job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._finishes.append((item, future))
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.ensure_future(self._finish_all())
        await future

    async def _finish_all(self) -> None:
        await asyncio.sleep(0)  # one turn of the loop: jobs ending in this one join the batch
        while self._finishes:
            batch = self._finishes[:MAX_FINISH_BATCH]
            del self._finishes[:MAX_FINISH_BATCH]
            try:
                async with self.pool.pipeline(transaction=True) as tr:
                    for item, _ in batch:
                        queue_finish(tr, self.queue_name, item)
                    self.finish_transactions += 1
                    await tr.execute()
            except BaseException as exc:  # each job learns it, as from arq's own finish_job
                for _, future in batch:
                    if future.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

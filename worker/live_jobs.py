"""``LiveJobsWorker``: arq's ``Worker`` that knows since when it runs each job, for the live view.

arq stores no start time and no "which worker" for a running job (its in-progress key is a bare
flag). This mixin notes each job's start in memory (no Redis command per job) and the worker's
heartbeat publishes the list (``shared.jobs.heartbeat``, field ``running``). The heartbeat is
written early, at most every ``RUNNING_REFRESH_SECONDS``, when that list changed, so the live view
lags a job's start or end by about a second, not a whole heartbeat interval.

Aborts (``shared.controls.actions.abort_job``) use arq's own support (``allow_abort_jobs``): arq
reads its abort set on every poll; here at most every ``ABORT_CHECK_SECONDS`` and only while this
worker runs a job (nothing else can be cancelled), so an idle or fast-polling worker pays no extra
Redis round trip for it. A job aborted before it started is still caught by arq's ``run_job``.
"""

from __future__ import annotations

import time

from arq.worker import Worker

RUNNING_REFRESH_SECONDS = 1.0
ABORT_CHECK_SECONDS = 0.25


class LiveJobsWorker(Worker):
    _running_since: dict[str, float] | None = None
    _published_running: frozenset[str] = frozenset()
    _abort_checked_at = float("-inf")

    @property
    def running_since(self) -> dict[str, float]:
        if self._running_since is None:
            self._running_since = {}
        return self._running_since

    async def run_job(self, job_id: str, score: int) -> None:
        self.running_since[job_id] = time.time()
        try:
            await super().run_job(job_id, score)
        finally:
            self.running_since.pop(job_id, None)

    async def _cancel_aborted_jobs(self) -> None:
        now = time.monotonic()
        if not self.job_tasks or now - self._abort_checked_at < ABORT_CHECK_SECONDS:
            return
        self._abort_checked_at = now
        await super()._cancel_aborted_jobs()

    def running_jobs(self) -> tuple[tuple[str, float], ...]:
        """What the next heartbeat publishes, and remember it was published."""
        running = dict(self.running_since)
        self._published_running = frozenset(running)
        return tuple(sorted(running.items(), key=lambda item: (item[1], item[0])))

    def running_changed(self, since_last_beat_s: float) -> bool:
        """True when the running set differs from the last published one and the last beat is at
        least ``RUNNING_REFRESH_SECONDS`` old (bounded extra writes under load)."""
        if since_last_beat_s < RUNNING_REFRESH_SECONDS:
            return False
        return frozenset(self.running_since) != self._published_running

"""``PausableWorker``: arq's ``Worker`` that starts no job while its queue is paused.

The pause itself (Redis key, audit, exactly once) is ``shared.controls.pause``. Here only the gate:
each poll refreshes the cached state (one ``EXISTS`` at most every ``PAUSE_REFRESH_SECONDS``;
a Redis error propagates to the poll's outage handling), and ``start_jobs`` starts nothing while
paused. Everything else of the poll goes on: running jobs finish, aborts are honoured, the
heartbeat is written, so a paused worker is idle but alive. A job not started burns no try.
"""

from __future__ import annotations

from arq.worker import Worker

from shared.jobs.pause_state import PauseGate


class PausableWorker(Worker):
    _pause_gate: PauseGate | None = None

    @property
    def pause_gate(self) -> PauseGate:
        if self._pause_gate is None:
            self._pause_gate = PauseGate(self.queue_name)
        return self._pause_gate

    async def _poll_iteration(self) -> None:
        await self.pause_gate.is_paused(self.pool)
        await super()._poll_iteration()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        if self.pause_gate.paused:
            return
        await super().start_jobs(job_ids)

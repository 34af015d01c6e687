"""Idle polls back off, so ``WORKER_POLL_DELAY_SECONDS=0`` does not spin a core when idle.

A poll delay of 0 stays allowed (tests and benches drain a storm fastest with it), but arq then
polls without pause: an idle worker burnt one core polling an empty queue (issue 17). Instead of
forbidding 0, a poll that started no job (queue empty, nothing due yet, or every job it saw is
already running) adds a wait that doubles from ``FIRST_WAIT_SECONDS`` until the idle interval
(poll delay + wait) reaches ``IDLE_POLL_INTERVAL_SECONDS``, the default poll delay; the first
poll that starts a job resets it. A busy worker never waits: every poll that starts a job is
followed at once by the next, and a worker with every slot taken does not poll. A poll delay at
or above the interval is never lengthened. Worst case, a job enqueued on an idle queue waits one
interval (50 ms), as with the default poll delay.
"""

from __future__ import annotations

FIRST_WAIT_SECONDS = 0.001
IDLE_POLL_INTERVAL_SECONDS = 0.05


class IdleBackoff:
    def __init__(self, poll_delay_s: float) -> None:
        self.max_wait_s = max(0.0, IDLE_POLL_INTERVAL_SECONDS - poll_delay_s)
        self._next_s = FIRST_WAIT_SECONDS

    def wait_after_poll(self, *, started_jobs: bool) -> float:
        """Seconds to wait after a poll: 0 when it started a job (and the back-off restarts)."""
        if started_jobs or self.max_wait_s <= 0:
            self._next_s = FIRST_WAIT_SECONDS
            return 0.0
        wait = min(self._next_s, self.max_wait_s)
        self._next_s = min(self._next_s * 2, self.max_wait_s)
        return wait

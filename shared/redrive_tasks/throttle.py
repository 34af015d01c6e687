"""The send schedule: never faster than the rate over any window, beyond one token of burst.

Wall-clock slots ``interval = 1 / rate`` apart: a send waits for its slot. A schedule that fell
behind (the executor was blocked by ``max_in_flight``, a paused queue, a slow database) keeps at
most one slot of lag, so it never catches up in a burst. Pure: the caller passes the clock.
"""

from __future__ import annotations


class Throttle:
    def __init__(self, rate_per_second: float, now: float) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate_per_second
        self.next_at = now

    def due_within(self, now: float, horizon: float) -> int:
        """How many slots fall due by ``now + horizon`` (after dropping lag beyond one slot)."""
        self.next_at = max(self.next_at, now - self.interval)
        if self.next_at > now + horizon:
            return 0
        return int((now + horizon - self.next_at) / self.interval + 1e-9) + 1

    def take(self, now: float) -> float:
        """Reserve the next slot (lag beyond one slot dropped here too: a send that fell behind
        within a batch never catches up in a burst); returns when it is due (the caller sleeps
        until then)."""
        self.next_at = max(self.next_at, now - self.interval)
        slot = self.next_at
        self.next_at += self.interval
        return slot

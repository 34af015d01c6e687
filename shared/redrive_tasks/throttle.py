"""The send schedule: absolute slots, never faster than the rate plus a small, bounded catch-up.

Slots sit at fixed wall-clock times ``interval = 1 / rate`` apart, counted from the task's start,
not from the previous send: a batch's own overhead (its transaction, the sleep granularity of the
event loop) delays a few slots, and the next sends catch them up, so that overhead never turns into
lost rate. The catch-up is bounded: a schedule that fell further behind (the executor blocked by
``max_in_flight``, a paused queue, a slow database) keeps at most ``max_lag`` seconds of slots,
``CATCH_UP_SECONDS`` of the rate (at least one slot), so it never bursts to catch up a stall. Over
any window of ``w`` seconds the sends stay within ``rate * (w + CATCH_UP_SECONDS) + 1``: at most
1.08 x the rate over any 1 s window, and one slot of burst at rates up to 12/s.
Pure: the caller passes the clock.
"""

from __future__ import annotations

import math

CATCH_UP_SECONDS = 0.08


class Throttle:
    def __init__(self, rate_per_second: float, now: float) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate_per_second
        self.max_lag = max(1, math.floor(rate_per_second * CATCH_UP_SECONDS + 1e-9)) * self.interval
        self.next_at = now

    def _drop_old_lag(self, now: float) -> None:
        self.next_at = max(self.next_at, now - self.max_lag)

    def due_within(self, now: float, horizon: float) -> int:
        """How many slots fall due by ``now + horizon``, late ones (up to ``max_lag``) included:
        the size of the next batch."""
        self._drop_old_lag(now)
        if self.next_at > now + horizon:
            return 0
        return int((now + horizon - self.next_at) / self.interval + 1e-9) + 1

    def take(self, now: float) -> float:
        """Reserve the next slot; returns when it is due (the caller sleeps until then; a slot
        already past is sent at once). Lag beyond ``max_lag`` is dropped here too, so a send that
        stalled within a batch never catches up in a burst."""
        self._drop_old_lag(now)
        slot = self.next_at
        self.next_at += self.interval
        return slot

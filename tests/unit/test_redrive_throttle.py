"""The redrive send schedule (``shared.redrive_tasks.throttle``): absolute slots, a bounded catch-up."""

from __future__ import annotations

import pytest

from shared.redrive_tasks.throttle import CATCH_UP_SECONDS, Throttle


def test_throttle_never_bursts_beyond_one_slot() -> None:
    throttle = Throttle(10, now=0.0)
    assert throttle.due_within(0.0, 0.1) == 2
    slots = [throttle.take(0.0) for _ in range(2)]
    assert slots == [0.0, 0.1]
    # blocked for 5 s: the lag kept is one slot, not 50
    assert throttle.due_within(5.0, 0.0) == 2
    assert [throttle.take(5.0), throttle.take(5.0)] == [pytest.approx(4.9), pytest.approx(5.0)]
    assert throttle.due_within(5.0, 0.05) == 0


def test_over_any_window_sends_stay_within_rate_plus_the_catch_up() -> None:
    throttle = Throttle(100, now=0.0)
    sent: list[float] = []
    now = 0.0
    for step in range(2000):  # an irregular loop: sometimes late, sometimes early
        now += 0.003 if step % 7 else 0.2
        for _ in range(throttle.due_within(now, 0.01)):
            sent.append(max(throttle.take(now), now))
    for i, start in enumerate(sent):
        in_window = sum(1 for t in sent[i:] if t < start + 1.0)
        assert in_window <= 100 * (1 + CATCH_UP_SECONDS) + 2


def test_a_send_late_within_a_batch_does_not_catch_up_in_a_burst() -> None:
    throttle = Throttle(10, now=0.0)
    assert throttle.due_within(0.0, 0.5) == 6  # the batch planned 6 slots: 0.0 … 0.5
    assert throttle.take(0.0) == 0.0
    # the loop stalled for a second: the remaining planned slots are not sent back to back
    assert [throttle.take(1.0), throttle.take(1.0), throttle.take(1.0)] == [
        pytest.approx(0.9),
        pytest.approx(1.0),
        pytest.approx(1.1),
    ]


def test_per_batch_overhead_is_caught_up_not_lost() -> None:
    """1,000/s in batches of what is due in 0.25 s, each batch followed by 30 ms of its own
    transaction with no send: the absolute slots catch that up, the rate holds, no 1 s window
    goes past the rate plus the catch-up."""
    throttle = Throttle(1000, now=0.0)
    sent: list[float] = []
    now = 0.0
    while now < 10.0:
        for _ in range(throttle.due_within(now, 0.25)):
            now = max(throttle.take(now), now + 0.0002)  # each send costs 0.2 ms, waits for its slot
            sent.append(now)
        now += 0.03  # the batch's commit
    achieved = (len(sent) - 1) / (sent[-1] - sent[0])
    assert achieved >= 0.99 * 1000
    start = 0
    for end, t in enumerate(sent):
        while t - sent[start] >= 1.0:
            start += 1
        assert end - start + 1 <= 1000 * (1 + CATCH_UP_SECONDS) + 1

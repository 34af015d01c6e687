"""The redrive send schedule (``shared.redrive_tasks.throttle``): no burst beyond one slot."""

from __future__ import annotations

import pytest

from shared.redrive_tasks.throttle import Throttle


def test_throttle_never_bursts_beyond_one_slot() -> None:
    throttle = Throttle(10, now=0.0)
    assert throttle.due_within(0.0, 0.1) == 2
    slots = [throttle.take(0.0) for _ in range(2)]
    assert slots == [0.0, 0.1]
    # blocked for 5 s: the lag kept is one slot, not 50
    assert throttle.due_within(5.0, 0.0) == 2
    assert [throttle.take(5.0), throttle.take(5.0)] == [pytest.approx(4.9), pytest.approx(5.0)]
    assert throttle.due_within(5.0, 0.05) == 0


def test_over_any_window_sends_stay_within_rate_plus_one() -> None:
    throttle = Throttle(100, now=0.0)
    sent: list[float] = []
    now = 0.0
    for step in range(2000):  # an irregular loop: sometimes late, sometimes early
        now += 0.003 if step % 7 else 0.2
        for _ in range(throttle.due_within(now, 0.01)):
            sent.append(max(throttle.take(now), now))
    for i, start in enumerate(sent):
        in_window = sum(1 for t in sent[i:] if t < start + 1.0)
        assert in_window <= 100 + 2


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

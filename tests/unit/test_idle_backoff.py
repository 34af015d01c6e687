"""Idle polls back off from 1 ms to the 50 ms idle interval; a poll that starts a job never waits."""

from __future__ import annotations

import pytest

from worker.idle_backoff import IDLE_POLL_INTERVAL_SECONDS, IdleBackoff


def test_idle_polls_double_the_wait_up_to_the_idle_interval() -> None:
    backoff = IdleBackoff(poll_delay_s=0)
    waits = [backoff.wait_after_poll(started_jobs=False) for _ in range(9)]
    assert waits == pytest.approx([0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05, 0.05])


def test_a_poll_that_starts_a_job_never_waits_and_restarts_the_back_off() -> None:
    backoff = IdleBackoff(poll_delay_s=0)
    for _ in range(10):
        backoff.wait_after_poll(started_jobs=False)
    assert backoff.wait_after_poll(started_jobs=True) == 0
    assert backoff.wait_after_poll(started_jobs=False) == pytest.approx(0.001)


@pytest.mark.parametrize("poll_delay", [0.0, 0.01, 0.03])
def test_the_idle_interval_counts_the_poll_delay(poll_delay: float) -> None:
    backoff = IdleBackoff(poll_delay_s=poll_delay)
    longest = max(backoff.wait_after_poll(started_jobs=False) for _ in range(20))
    assert poll_delay + longest == pytest.approx(IDLE_POLL_INTERVAL_SECONDS)


@pytest.mark.parametrize("poll_delay", [0.05, 0.5])
def test_a_poll_delay_at_or_above_the_interval_is_never_lengthened(poll_delay: float) -> None:
    backoff = IdleBackoff(poll_delay_s=poll_delay)
    assert all(backoff.wait_after_poll(started_jobs=False) == 0 for _ in range(10))

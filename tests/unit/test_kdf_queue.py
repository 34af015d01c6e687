"""The hashing queue's admission rules (``shared/auth/kdf_queue.py``), without hashing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from shared.auth.kdf_queue import HashingQueueFull, KdfQueue


def test_one_place_per_address_and_a_bounded_total() -> None:
    queue = KdfQueue(running=2, capacity=3, per_client=1)
    first = queue.admit("198.51.100.1")
    with pytest.raises(HashingQueueFull) as same_address:
        queue.admit("198.51.100.1")
    assert same_address.value.code == "rate_limited" and same_address.value.retry_after_seconds >= 1
    second, third = queue.admit("198.51.100.2"), queue.admit(None)
    with pytest.raises(HashingQueueFull) as full:
        queue.admit("198.51.100.4")
    assert full.value.code == "busy" and queue.admitted == 3
    for held in (first, second, third):
        with held:
            pass
    assert queue.admitted == 0
    with queue.admit("198.51.100.1"):  # the place was given back
        assert queue.admitted == 1


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        KdfQueue(running=3, capacity=2)


async def test_at_most_running_derivations_at_once() -> None:
    queue = KdfQueue(running=2, capacity=8, per_client=8)
    lock = threading.Lock()
    active, peak = 0, 0

    def derive(seconds: float) -> float:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(seconds)
        with lock:
            active -= 1
        return seconds

    results = await asyncio.gather(*(queue.run(derive, 0.05) for _ in range(6)))
    assert results == [0.05] * 6 and peak == 2

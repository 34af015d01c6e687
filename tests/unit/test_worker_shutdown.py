"""``cancel_until_done`` finishes a task that swallows cancels; ``StopRequest`` is one-way."""

from __future__ import annotations

import asyncio

import pytest

from worker.shutdown import PollingStopped, StopRequest, cancel_until_done


async def _swallows_cancels(times: list[int], swallowed: list[int]) -> None:
    """Like a coroutine inside Python 3.11's ``wait_for`` when the cancel and the result meet:
    swallows the first ``times[0]`` cancels (a list, so the test can change it midway)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if len(swallowed) >= times[0]:
                raise
            swallowed.append(1)


async def test_a_task_that_swallows_cancels_is_cancelled_until_it_stops() -> None:
    swallowed: list[int] = []
    task = asyncio.ensure_future(_swallows_cancels([3], swallowed))
    await asyncio.sleep(0)
    assert await cancel_until_done(task, timeout=5, name="test")
    assert task.cancelled() and len(swallowed) == 3


async def test_the_repeats_are_bounded_and_the_answer_says_so() -> None:
    swallowed: list[int] = []
    times = [10**6]
    task = asyncio.ensure_future(_swallows_cancels(times, swallowed))
    await asyncio.sleep(0)
    try:
        assert not await cancel_until_done(task, timeout=0.3, name="test")
        assert not task.done() and len(swallowed) >= 2
    finally:
        times[0] = 0  # let it go: the next cancel is taken (a task left swallowing hangs the loop)
        assert await cancel_until_done(task, timeout=5, name="test")


async def test_a_done_task_is_left_alone() -> None:
    task = asyncio.ensure_future(asyncio.sleep(0))
    await task
    assert await cancel_until_done(task, timeout=0.1, name="test")
    assert not task.cancelled()


def test_stop_request_raises_only_once_set() -> None:
    stop = StopRequest()
    stop.check()
    assert not stop.is_set()
    stop.set()
    with pytest.raises(PollingStopped):
        stop.check()

"""Cancelling a task until it is really gone, and finishing work a cancel must not cut short.

On Python 3.11 a ``task.cancel()`` can vanish: ``asyncio.wait_for`` drops the ``CancelledError``
when the awaited call finishes in the same loop iteration as the cancel (CPython gh-86296), and
redis-py 5 sends every command through ``wait_for``. Any task that awaits Redis can therefore
swallow one cancel (issue 17). Code that stops a task it owns (the worker's main task, the
redrive executor's drivers) uses ``cancel_until_done`` instead of a bare ``cancel(); await``.

The other way round, ``run_to_end`` finishes a bounded piece of work although the task awaiting
it is cancelled meanwhile. The failure decorator (``worker.failure``) runs a final failure's DLQ
capture through it: arq ends a try that overruns its timeout by cancelling it and then finishes
the job as failed for good, so a capture cut there was a job in neither the DLQ nor the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from shared.infra.logs import log_event

T = TypeVar("T")

# How often the cancel is repeated while a task ignores it.
RECANCEL_INTERVAL_SECONDS = 0.1


async def cancel_until_done(task: asyncio.Future[Any], *, timeout: float, name: str) -> bool:
    """Cancel ``task`` and keep cancelling until it is done or ``timeout`` passes.

    Returns whether it finished. A cancel that had to be repeated is logged once
    (``worker_cancel_repeated``), so a lost cancellation leaves a trace instead of a hang.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log_event("ERROR", "worker_task_ignored_cancel", task=name, attempts=attempts)
            return False
        task.cancel()
        attempts += 1
        await asyncio.wait([task], timeout=min(RECANCEL_INTERVAL_SECONDS, remaining))
    if attempts > 1:
        log_event("WARNING", "worker_cancel_repeated", task=name, attempts=attempts)
    return True


async def run_to_end(work: Awaitable[T]) -> T:
    """Await ``work`` until it ends, even if the awaiting task is cancelled meanwhile; its result.

    A cancel that arrives is absorbed (``Task.uncancel``, so an enclosing ``asyncio.timeout``
    still counts its own), and the caller goes on as if it had come after ``work``: it decides
    what its task ends with. ``work`` must bound its own duration (a task that absorbs cancels
    holds up whoever cancelled it: arq's ``wait_for`` and a worker's shutdown wait for it). It
    runs in a task of its own (``asyncio.shield``), and a cancel of that task itself propagates.
    """
    inner = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.cancelled():
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()

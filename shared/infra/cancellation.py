"""Cancelling a task until it is really gone.

On Python 3.11 a ``task.cancel()`` can vanish: ``asyncio.wait_for`` drops the ``CancelledError``
when the awaited call finishes in the same loop iteration as the cancel (CPython gh-86296), and
redis-py 5 sends every command through ``wait_for``. Any task that awaits Redis can therefore
swallow one cancel (issue 17). Code that stops a task it owns (the worker's main task, the
redrive executor's drivers) uses ``cancel_until_done`` instead of a bare ``cancel(); await``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.infra.logs import log_event

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

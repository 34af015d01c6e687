"""Stopping a worker even when a cancellation is lost on the way.

arq stops a worker by cancelling its main task: after SIGTERM it stops picking jobs, waits up to
``job_completion_wait`` for the running ones, then calls ``main_task.cancel()`` and its
``on_stop`` hook. On Python 3.11 that cancel can vanish: ``asyncio.wait_for`` returns the inner
result and drops the ``CancelledError`` when the awaited call finishes in the same loop
iteration as the cancel (CPython gh-86296; 3.12 rebuilt ``wait_for`` on ``asyncio.timeout``).
redis-py 5 sends every command through ``wait_for`` when ``socket_timeout`` is set, so a poll
loop that talks to Redis without pause (``WORKER_POLL_DELAY_SECONDS=0``) lost the stop in about
one storm-then-SIGTERM run in two (9 of 20 here) and polled an empty queue until killed
(issue 17). Any task that awaits Redis (the spool drain too) can lose a cancel the same way.

So stopping never depends on a cancel being delivered:

1. ``StopRequest`` is set when arq gives up the main task (its ``on_stop`` hook, called right
   after its ``cancel()``, so running jobs have already finished or ``job_completion_wait`` has
   passed). The poll loop checks it at the top of every iteration and ends on its own, at the
   latest one iteration (one Redis round trip, or one poll delay) after a lost cancel.
2. ``cancel_until_done`` repeats the cancel until the task has finished (for awaits outside the
   poll loop: start-up waits, the spool drain), up to a bound, and says whether it finished.

Rejected: a parser without the zero-timeout read (``can_read_destructive``). Traced on Python
3.11.7 (every CancelledError of the main task recorded, first one per lost stop), all 18 lost
cancels of 150 stops went through ``wait_for`` in redis-py's ``send_packed_command``, none
through the parser; with redis-py's pure-Python parser 66 of 150 stops still lost their cancel.
A patched third-party method would also be one more thing to re-check on every upgrade.
"""

from __future__ import annotations

from shared.infra.cancellation import cancel_until_done

__all__ = ["PollingStopped", "StopRequest", "cancel_until_done"]


class PollingStopped(Exception):
    """Raised by the poll loop once a stop was requested; the worker's ``main`` returns on it."""


class StopRequest:
    """A one-way flag: once set, the poll loop (and start-up waits) end by themselves."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def check(self) -> None:
        """Raise ``PollingStopped`` when a stop was requested."""
        if self._set:
            raise PollingStopped

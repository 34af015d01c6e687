"""Why an entry is in the DLQ and how it left: the names, said once.

``FailureReason`` and ``Resolution`` are the one definition: the tuples derive from them and so do
the HTTP contract's enums (``service/contract.py`` builds the OpenAPI document from the types).
``sql/001_initial.sql`` holds the same sets as CHECK constraints; ``tests/unit/test_contract.py``
checks that they agree.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

FailureReason = Literal[
    "exhausted",  # the last try failed (or the error was transient on every try)
    "permanent",  # an error that no retry can fix
    "max_tries_exceeded",  # the job passed max_tries while queued (cancelled mid-try)
    "worker_lost",  # the worker died on the job's last try
    "expired",  # the job expired in Redis before it ran
    "function_not_found",  # no worker function of that name on the queue
]
Resolution = Literal["retried", "manual"]

FAILURE_REASONS: Final[tuple[FailureReason, ...]] = get_args(FailureReason)
RESOLUTIONS: Final[tuple[Resolution, ...]] = get_args(Resolution)

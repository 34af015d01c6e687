"""Why an entry is in the DLQ and how it left: the names, said once.

``DlqReason`` and ``Resolution`` are the one definition: the tuples derive from them and so do
the HTTP contract's enums (``service/contract.py`` builds the OpenAPI document from the types).
The SQL CHECK constraints hold the same sets (``sql/001_initial.sql``, widened by
``sql/005_dlq_control_reasons.sql``); ``tests/unit/test_dlq_reasons.py`` and
``tests/unit/test_contract.py`` check that they agree.

Failures: ``exhausted`` (last try of a transient error), ``permanent``, arq's silent paths
``max_tries_exceeded``, ``worker_lost``, ``expired``, ``function_not_found``, and ``poison`` for a
quarantined job. Operator actions (``shared.controls``), stored already resolved: ``cancelled``
(removed before it ran again) and ``aborted`` (a running job cancelled through arq's abort).
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
    "poison",  # quarantined: its previous tries vanished with their worker
]
ControlReason = Literal["cancelled", "aborted"]
DlqReason = Literal[FailureReason, ControlReason]
Resolution = Literal["retried", "manual"]

FAILURE_REASONS: Final[tuple[FailureReason, ...]] = get_args(FailureReason)
CONTROL_REASONS: Final[tuple[ControlReason, ...]] = get_args(ControlReason)
DLQ_REASONS: Final[tuple[DlqReason, ...]] = get_args(DlqReason)
RESOLUTIONS: Final[tuple[Resolution, ...]] = get_args(Resolution)
CANCELLED: Final[ControlReason] = "cancelled"
ABORTED: Final[ControlReason] = "aborted"

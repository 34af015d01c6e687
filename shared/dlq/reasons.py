"""Why a job is in the DLQ: the one list every enum (SQL check, OpenAPI, console) derives from.

Failures: ``exhausted`` (last try of a transient error), ``permanent``, and arq's silent paths
``max_tries_exceeded``, ``worker_lost``, ``expired``, ``function_not_found``; ``poison`` for a
quarantined job. Operator actions (``shared.controls``), stored already resolved: ``cancelled``
(removed before it ran again) and ``aborted`` (a running job cancelled through arq's abort).
"""

from __future__ import annotations

from typing import Final

CANCELLED: Final = "cancelled"
ABORTED: Final = "aborted"
FAILURE_REASONS: Final = (
    "exhausted",
    "permanent",
    "max_tries_exceeded",
    "worker_lost",
    "expired",
    "function_not_found",
    "poison",
)
CONTROL_REASONS: Final = (CANCELLED, ABORTED)
DLQ_REASONS: Final = (*FAILURE_REASONS, *CONTROL_REASONS)

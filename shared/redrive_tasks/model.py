"""A redrive task as stored (``sql/007_redrive_tasks.sql``), its states and defaults, said once.

States: ``pending`` (created, no executor yet) → ``running`` ⇄ ``paused`` → ``completed`` |
``cancelled`` | ``tripped`` (the breaker stopped it; an admin resumes or cancels). Items:
``pending`` → ``sent`` → ``succeeded`` | ``failed_again``; ``skipped`` when, at its turn, the entry
was already resolved (by hand, by a single retry, by another task), pruned, or had no payload.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal, get_args

from msgspec import Meta, Struct

TaskState = Literal["pending", "running", "paused", "completed", "cancelled", "tripped"]
TASK_STATES: Final[tuple[TaskState, ...]] = get_args(TaskState)
ItemOutcome = Literal["sent", "succeeded", "failed_again", "skipped"]
ITEM_OUTCOMES: Final[tuple[ItemOutcome, ...]] = get_args(ItemOutcome)

# Defaults for the console's "Retry all…" and the bulk API: a provider that just recovered (an
# SMTP relay coming back from an outage, typically with its own per-client throttling of a few
# to a few tens of messages a second) gets 10 jobs/s with at most 20 unfinished at a time: 36,000
# an hour, so a 50,000-entry backlog drains in under 1.5 h, and the breaker has its 20 outcomes
# within ~2 s of the start, before more than ~40 jobs were sent into a still-failing provider.
DEFAULT_RATE_PER_SECOND: Final = 10.0
DEFAULT_MAX_IN_FLIGHT: Final = 20
DEFAULT_BREAKER_MIN_OUTCOMES: Final = 20
DEFAULT_BREAKER_THRESHOLD: Final = 0.5
MAX_RATE_PER_SECOND: Final = 5000.0
MAX_IN_FLIGHT: Final = 10_000


class TaskFields(Struct, frozen=True, kw_only=True):
    """What a task shows as stored, said once: the task (``RedriveTask``) and the API's view of it
    (``service.routes.redrives.TaskView``) both extend it."""

    id: uuid.UUID
    name: str
    reason: str
    selection: dict[str, Any]
    state: TaskState
    state_reason: str | None
    rate_per_second: float
    max_in_flight: int
    breaker_min_outcomes: int
    breaker_threshold: float
    total: int
    sent: int
    succeeded: int
    failed_again: int
    skipped: Annotated[int, Meta(description="resolved elsewhere before their turn, or not replayable")]
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RedriveTask(TaskFields, frozen=True, kw_only=True):
    updated_at: datetime
    first_sent_at: datetime | None
    last_sent_at: datetime | None

    @property
    def in_flight(self) -> int:
        """Sent, outcome not in yet ("still pending")."""
        return self.sent - self.succeeded - self.failed_again

    @property
    def remaining(self) -> int:
        """Not sent yet."""
        return self.total - self.sent - self.skipped

    @property
    def achieved_rate(self) -> float | None:
        """Jobs/s between the first and the last send (pauses included)."""
        if self.first_sent_at is None or self.last_sent_at is None or self.sent < 2:
            return None
        seconds = (self.last_sent_at - self.first_sent_at).total_seconds()
        return round((self.sent - 1) / seconds, 2) if seconds > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until everything is sent, at the achieved rate (the set rate when unknown)."""
        if self.state not in ("pending", "running"):
            return None
        rate = min(self.achieved_rate or self.rate_per_second, self.rate_per_second)
        return round(self.remaining / rate, 1)

    @classmethod
    def from_row(cls, row: Any) -> RedriveTask:
        return cls(**{name: row[name] for name in cls.__struct_fields__})


TASK_COLUMNS = """
id, name, reason, selection, state, state_reason, rate_per_second, max_in_flight,
breaker_min_outcomes, breaker_threshold, total, sent, succeeded, failed_again, skipped, created_by,
created_at, updated_at, started_at, first_sent_at, last_sent_at, finished_at
"""

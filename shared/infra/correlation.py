"""The correlation id of the current request or job, carried in a ContextVar.

HTTP middleware sets it from ``X-Request-ID``; ``enqueue`` stamps it into jobs; the worker binds
the job's id back here, so every log line and DLQ row of that work carries it.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token

_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def is_valid_correlation_id(value: str | None) -> bool:
    return value is not None and _VALID_ID.match(value) is not None


def accept_or_new(value: str | None) -> str:
    """The caller's id if it is 1-128 chars of ``[A-Za-z0-9._-]``, else a new UUID."""
    return value if value is not None and is_valid_correlation_id(value) else str(uuid.uuid4())


def current_correlation_id() -> str | None:
    return _correlation_id.get()


def bind_correlation_id(value: str | None) -> Token[str | None]:
    return _correlation_id.set(value)


def reset_correlation_id(token: Token[str | None]) -> None:
    _correlation_id.reset(token)

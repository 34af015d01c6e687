"""The correlation id of the current request or job, carried in a ContextVar.

HTTP middleware sets it from ``X-Request-ID``; ``enqueue`` stamps it into jobs; the worker binds
the job's id back here, so every log line and DLQ row of that work carries it.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar, Token

_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_VARIANT = "89ab"
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def is_valid_correlation_id(value: str | None) -> bool:
    return value is not None and _VALID_ID.match(value) is not None


def new_request_id() -> str:
    """A random (version 4) UUID string, built straight from 16 random bytes: ``str(uuid4())``
    constructs a UUID object on every request without a caller's id."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def accept_or_new(value: str | None) -> str:
    """The caller's id if it is 1-128 chars of ``[A-Za-z0-9._-]``, else a new UUID."""
    return value if value is not None and is_valid_correlation_id(value) else new_request_id()


def current_correlation_id() -> str | None:
    return _correlation_id.get()


def bind_correlation_id(value: str | None) -> Token[str | None]:
    return _correlation_id.set(value)


def reset_correlation_id(token: Token[str | None]) -> None:
    _correlation_id.reset(token)

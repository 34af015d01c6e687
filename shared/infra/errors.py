"""Domain errors raised by ``shared``; ``service/errors.py`` maps them to the JSON error shape.

``shared`` never raises HTTP errors. Each error carries a stable snake_case ``code``.
"""

from __future__ import annotations


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Invalid(DomainError):
    code = "invalid_request"


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class Unauthenticated(DomainError):
    code = "unauthenticated"


class Forbidden(DomainError):
    code = "forbidden"


class RateLimited(DomainError):
    code = "rate_limited"


class Busy(DomainError):
    """Work that cannot proceed right now but will soon (e.g. every eligible row is locked).

    Workers treat it as transient: the job is retried with backoff instead of failing.
    """

    code = "busy"


class DependencyUnavailable(DomainError):
    """A backing service (postgres, redis) cannot be reached."""

    code = "dependency_unavailable"

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency

"""Parsing identifiers from untrusted text: one place that decides what counts as a UUID."""

from __future__ import annotations

import uuid


def parse_uuid(value: object) -> uuid.UUID | None:
    """The UUID in ``value`` (a ``UUID`` or its canonical/hex string), or ``None`` when it is not one.

    Callers turn ``None`` into their own error (400 for a route, ``Invalid`` for a job).
    """
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None

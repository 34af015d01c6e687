"""Times as on-call reads them: ISO 8601 in UTC with a ``Z``, one formatter for every surface."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

Precision = Literal["auto", "seconds", "milliseconds", "microseconds"]

# An aware datetime: what a field of a response model holds. msgspec encodes it as ISO 8601
# (UTC as ``Z``, as asyncpg returns ``timestamptz``) and describes it as ``format: date-time``.
UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


def iso_utc(moment: datetime, timespec: Precision = "auto") -> str:
    """``2026-11-28T23:05:01.123Z``: converted to UTC (naive values are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def iso_utc_or_none(moment: datetime | None) -> str | None:
    return iso_utc(moment) if moment is not None else None


def now_iso_utc() -> str:
    return iso_utc(datetime.now(UTC))

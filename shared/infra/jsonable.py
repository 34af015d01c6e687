"""Dataclasses to JSON-safe dicts: one conversion for job results, cron counts, API bodies."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson


def dataclass_to_dict(value: Any) -> dict[str, Any]:
    """Shallow field dict of a dataclass instance (values untouched); ``{}`` for anything else.

    Shallow on purpose: ``dataclasses.asdict`` deep-copies every value, which costs time in
    proportion to a job's arguments on the failure path.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return {}


def to_jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value`` (dataclasses become dicts; Decimal, UUID, datetime strings)."""

    def default(item: Any) -> Any:
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclass_to_dict(item)
        return str(item)

    return orjson.loads(orjson.dumps(value, default=default))

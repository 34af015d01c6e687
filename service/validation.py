"""Request parsing shared by the routes: JSON bodies and query parameters, strictly.

Anything malformed is a domain ``Invalid`` (400 in the JSON error shape), never a 500.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import Request

from shared.infra.errors import Invalid
from shared.infra.ids import parse_uuid


async def json_object(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        if allow_empty:
            return {}
        raise Invalid("request body must be a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Invalid("request body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise Invalid("request body must be a JSON object")
    if _holds_nul(data):
        raise Invalid("request body must not contain NUL characters (\\u0000)")
    return data


def _holds_nul(value: Any) -> bool:
    """Postgres text cannot store U+0000: refuse it here (400) rather than fail in SQL (500).

    Iterative: a body nested a thousand levels deep (orjson accepts 1024) must not hit Python's
    recursion limit.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def reject_unknown(data: Iterable[str], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise Invalid(f"unknown {where}: {', '.join(unknown)}")


def query_params(request: Request, allowed: Iterable[str]) -> dict[str, str]:
    """Single-valued query parameters, rejecting unknown and repeated names."""
    allowed = tuple(allowed)
    reject_unknown(request.query_params.keys(), allowed, "query parameter(s)")
    params: dict[str, str] = {}
    for name in allowed:
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise Invalid(f"query parameter {name} given more than once")
        if values:
            if _holds_nul(values[0]):
                raise Invalid(f"query parameter {name} must not contain NUL characters")
            params[name] = values[0]
    return params


def optional_bool(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise Invalid(f"{name} must be true or false")


def int_in_range(value: Any, name: str, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise Invalid(f"{name} must be an integer between {low} and {high}")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise Invalid(f"{name} must be an integer between {low} and {high}") from exc
    if isinstance(value, float) or str(number) != str(value).strip().lstrip("+") or not low <= number <= high:
        raise Invalid(f"{name} must be an integer between {low} and {high}")
    return number


def json_int_in_range(value: Any, name: str, low: int, high: int, default: int) -> int:
    """An integer field of a JSON body: a JSON number without fraction, not a string or a bool."""
    if value is None:
        return default
    if type(value) is not int or not low <= value <= high:
        raise Invalid(f"{name} must be an integer between {low} and {high}")
    return value


def uuid_value(value: Any, name: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a UUID string")
    parsed = parse_uuid(value)
    if parsed is None:
        raise Invalid(f"{name} must be a UUID")
    return parsed


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None

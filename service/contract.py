"""The HTTP contract, said once: a route's request, response and OpenAPI entry come from its types.

A route is one handler under ``@operation(...)``, listed in its module's ``OPERATIONS``::

    class ThingQuery(msgspec.Struct, forbid_unknown_fields=True):
        queue: QueueName | None = None                       # enums come from shared's Literals
        limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20

    @dataclass(frozen=True, slots=True)                     # or a msgspec.Struct
    class ThingList:
        items: list[Thing]

    @operation("GET", "/api/v1/admin/things", params=ThingQuery, body=NoBody, response=ThingList,
               operation_id="listThings", summary="List things", tags=("admin",), auth="admin",
               errors=(400, 401, 403, 503))
    async def list_things(call: Call[ThingQuery, NoBody]) -> ThingList:
        ...  # call.params, call.body, call.principal, call.state: already decoded and checked

    OPERATIONS = [list_things]

``Operation.route()`` is the Starlette ``Route``; ``service.openapi`` builds ``/openapi.json``
(3.1, JSON Schema 2020-12, via ``msgspec.json.schema_components``) from the same declarations,
so the document cannot drift from what the code decodes and encodes. mypy checks that the handler
takes ``Call[params, body]`` and returns the declared ``response``.

What the contract guarantees, in order, for every request:

1. ``auth``: ``"admin"`` (``require_admin``: 401, or 403 for another role), ``"session"`` (any live
   session, 401) or ``"public"``. Checked before any input is read, as before.
2. ``params``: one ``Struct`` for path *and* query parameters (a field named in the path template
   is a path parameter). Strict: an unknown or repeated query parameter is a 400, an integer
   field takes only decimal digits, a boolean ``true``/``false``/``1``/``0`` (any case), every
   other field the string as sent (``null`` is the text "null"); ``Meta`` bounds apply.
3. ``body``: a ``Struct`` with ``forbid_unknown_fields=True``, decoded by ``msgspec.json`` (unknown
   field, wrong type, out of range: 400). ``NoBody``: no request body is documented; an empty body
   or ``{}`` is accepted and anything else is a 400. GET operations never read the body.
4. NUL characters (``\\u0000``) anywhere in parameters or body: 400 (Postgres text cannot hold them).
5. The handler's return value is encoded with ``msgspec.json.encode`` at ``status`` with
   ``headers``; ``NoContent`` is an empty 204. A handler may return a Starlette ``Response`` for a
   status or media type of its own (``other_responses`` documents them).

Every failure in 1-4 is a domain error, so the client sees the usual ``{"error": {"code",
"message"}}`` (400 ``invalid_request`` naming the field). ``errors`` lists the error statuses the
operation declares; each is documented with the ``Error`` schema.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.guard import Principal, authenticate, client_ip, require_admin
from service.state import AppState, app_state
from shared.infra.errors import Invalid

P = TypeVar("P")
B = TypeVar("B")
R = TypeVar("R")

Auth = Literal["public", "session", "admin"]


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    """An operation without path or query parameters: any query parameter is a 400."""


class NoBody(msgspec.Struct, forbid_unknown_fields=True):
    """An operation without a request body: empty or ``{}`` only."""


class NoContent(msgspec.Struct):
    """The handler's answer when there is nothing to send: 204, no body."""


@dataclass(frozen=True, slots=True)
class Call(Generic[P, B]):
    """One decoded request, as a handler sees it."""

    request: Request
    params: P
    body: B
    caller: Principal | None

    @property
    def principal(self) -> Principal:
        """The authenticated caller (``auth="admin"`` or ``"session"`` operations only)."""
        if self.caller is None:
            raise RuntimeError("a public operation has no principal")
        return self.caller

    @property
    def state(self) -> AppState:
        return app_state(self.request)

    @property
    def ip(self) -> str | None:
        return client_ip(self.request)


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation(Generic[P, B, R]):
    """A route's whole contract; build it with ``@operation``."""

    method: str
    path: str
    handler: Callable[[Call[P, B]], Awaitable[R | Response]]
    params: type[P]
    body: type[B]
    response: type[R]
    operation_id: str
    summary: str
    tags: tuple[str, ...]
    auth: Auth
    status: int = 200
    response_description: str = "OK"
    media_type: str = "application/json"
    body_required: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    error_descriptions: Mapping[int, str] = field(default_factory=dict)
    other_responses: Mapping[int, str] = field(default_factory=dict)  # same schema, other status
    description: str | None = None

    def route(self) -> Route:
        async def endpoint(request: Request) -> Response:
            return await self.serve(request)

        endpoint.__name__ = getattr(self.handler, "__name__", self.operation_id)
        return Route(self.path, endpoint, methods=[self.method])

    async def serve(self, request: Request) -> Response:
        caller = await _authenticate(request, self.auth) if self.auth != "public" else None
        params = decode_params(request, self.params)
        if self.body is NoBody and self.method == "GET":
            body = self.body()
        else:
            body = decode_body(await request.body(), self.body, required=self.body_required)
        result = await self.handler(Call(request, params, body, caller))
        if isinstance(result, Response):
            return result
        headers = dict(self.headers) if self.headers else None
        if isinstance(result, NoContent):
            return Response(status_code=self.status, headers=headers)
        return Response(
            msgspec.json.encode(result), status_code=self.status, media_type=self.media_type, headers=headers
        )


def operation(
    method: str,
    path: str,
    *,
    params: type[P],
    body: type[B],
    response: type[R],
    operation_id: str,
    summary: str,
    tags: tuple[str, ...],
    auth: Auth,
    **options: Any,
) -> Callable[[Callable[[Call[P, B]], Awaitable[R | Response]]], Operation[P, B, R]]:
    """Declare the decorated handler's route; see the module docstring. ``options``: the optional
    fields of ``Operation`` (``status``, ``errors``, ``headers``, ``description``, ...)."""

    def declare(handler: Callable[[Call[P, B]], Awaitable[R | Response]]) -> Operation[P, B, R]:
        return Operation(
            method=method,
            path=path,
            handler=handler,
            params=params,
            body=body,
            response=response,
            operation_id=operation_id,
            summary=summary,
            tags=tags,
            auth=auth,
            **options,
        )

    return declare


async def _authenticate(request: Request, auth: Auth) -> Principal | None:
    if auth == "admin":
        return await require_admin(request)
    if auth == "session":
        return await authenticate(request)
    return None


# -- decoding ------------------------------------------------------------------------------------
_DIGITS = re.compile(r"-?[0-9]{1,18}")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True, slots=True)
class _ParamFields:
    names: frozenset[str]
    integers: Mapping[str, str]  # name -> "an integer between 1 and 100"
    booleans: frozenset[str]
    choices: Mapping[str, tuple[Any, ...]]  # Literal fields -> allowed values


def _unwrap(kind: msgspec.inspect.Type) -> list[msgspec.inspect.Type]:
    if isinstance(kind, msgspec.inspect.UnionType):
        return [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
    return [kind]


_FIELDS: dict[type[Any], _ParamFields] = {}


def _fields(model: type[Any]) -> _ParamFields:
    """What the decoders need to know about a model's fields, computed once per model."""
    known = _FIELDS.get(model)
    if known is not None:
        return known
    info = msgspec.inspect.type_info(model)
    assert isinstance(info, msgspec.inspect.StructType | msgspec.inspect.DataclassType), model
    integers: dict[str, str] = {}
    booleans: set[str] = set()
    choices: dict[str, tuple[Any, ...]] = {}
    for item in info.fields:
        for kind in _unwrap(item.type):
            if isinstance(kind, msgspec.inspect.IntType):
                low, high = kind.ge, kind.le
                span = f" between {low} and {high}" if low is not None and high is not None else ""
                integers[item.encode_name] = f"an integer{span}"
            elif isinstance(kind, msgspec.inspect.BoolType):
                booleans.add(item.encode_name)
            elif isinstance(kind, msgspec.inspect.LiteralType):
                choices[item.encode_name] = tuple(kind.values)
    names = frozenset(f.encode_name for f in info.fields)
    known = _ParamFields(names, integers, frozenset(booleans), choices)
    _FIELDS[model] = known
    return known


def decode_params(request: Request, model: type[P]) -> P:
    """Path and query parameters into ``model``, strictly (see the module docstring)."""
    fields = _fields(model)
    raw: dict[str, Any] = dict(request.path_params)
    if not raw and not request.scope.get("query_string"):
        # nothing to check (the common case: probes, first pages): no query parsing at all
        return _convert(raw, model)
    query = request.query_params
    unknown = sorted({name for name in query if name not in fields.names or name in raw})
    if unknown:
        raise Invalid(f"unknown query parameter(s): {', '.join(unknown)[:200]}")
    for name in query:
        values = query.getlist(name)
        if len(values) > 1:
            raise Invalid(f"query parameter {name} given more than once")
        raw[name] = values[0]
    for name, value in raw.items():
        if "\x00" in value:
            raise Invalid(f"{name} must not contain NUL characters")
        if name in fields.integers:
            if not _DIGITS.fullmatch(value):
                raise Invalid(f"{name} must be {fields.integers[name]}")
            raw[name] = int(value)
        elif name in fields.booleans:
            if value.lower() not in _BOOLEANS:
                raise Invalid(f"{name} must be true or false")
            raw[name] = _BOOLEANS[value.lower()]
    return _convert(raw, model)


def _convert(raw: dict[str, Any], model: type[P]) -> P:
    try:  # strict: every other value stays the string it was ("null" is not None)
        return msgspec.convert(raw, model)
    except msgspec.ValidationError as exc:
        raise Invalid(_human(exc, model, "query parameter")) from exc


def decode_body(raw: bytes, model: type[B], *, required: bool = True) -> B:
    """A JSON request body into ``model``, strictly (see the module docstring)."""
    if not raw.strip():
        if model is NoBody or not required:
            return msgspec.convert({}, model)
        raise Invalid("request body must be a JSON object")
    try:
        value = msgspec.json.decode(raw, type=model)
    except msgspec.ValidationError as exc:
        raise Invalid(_human(exc, model, "field")) from exc
    except msgspec.DecodeError as exc:
        raise Invalid("request body is not valid JSON") from exc
    # JSON can only carry NUL as the escape; decode untyped only then (rare) to look for it
    if b"\\u0000" in raw and _holds_nul(msgspec.json.decode(raw)):
        raise Invalid("request body must not contain NUL characters (\\u0000)")
    return value


def _holds_nul(value: Any) -> bool:
    """Iterative, so a deeply nested value cannot exhaust the stack."""
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


_ERROR = re.compile(r"(?P<what>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?", re.S)
_QUOTED = re.compile(r"`([^`]*)`")


def _human(exc: msgspec.ValidationError, model: type[Any], where: str) -> str:
    """msgspec's message as a sentence naming the field; never echoes the client's value."""
    match = _ERROR.fullmatch(str(exc))
    what, path = (match["what"], match["path"] or "") if match else (str(exc), "")
    named = _QUOTED.findall(what)
    if what.startswith("Object contains unknown field") and named:
        return f"unknown {where}(s): {named[0][:100]}"
    if what.startswith("Object missing required field") and named:
        return f"{named[0]} is required"
    if not path:
        return "request body must be a JSON object" if where == "field" else what
    if what.startswith("Invalid enum value"):
        allowed = _fields(model).choices.get(path)
        if allowed:
            return f"{path} must be one of {', '.join(map(str, allowed))}"
        return f"{path} has a value that is not allowed"
    sentence = _QUOTED.sub(r"\1", what[:1].lower() + what[1:])
    return f"{path}: {sentence}"

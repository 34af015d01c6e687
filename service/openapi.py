"""``GET /openapi.json``: OpenAPI 3.1 generated from the operations' types (``service.contract``).

No schema is written by hand: request bodies and answers become components through
``msgspec.json.schema_components`` (OpenAPI 3.1 is JSON Schema 2020-12), a params model's fields
become path and query parameters, and every declared error status points at the ``Error`` schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
from starlette.responses import Response

from service.contract import Call, NoBody, NoContent, NoParams, Operation, operation
from service.errors import Error
from shared import __version__

ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "invalid request (validation)",
    401: "missing, malformed, unknown, expired or revoked token",
    403: "authenticated but not an admin",
    404: "not found",
    409: "conflict (already resolved)",
    413: "body over 1 MiB",
    429: "rate limited or locked",
    503: "a backing service (Postgres or Redis) is unavailable",
}


REF_TEMPLATE = "#/components/schemas/{name}"


def openapi_document(
    operations: Iterable[Operation[Any, Any, Any]], *, title: str, version: str, description: str
) -> dict[str, Any]:
    """OpenAPI 3.1 from the operations' types; no schema is written by hand."""
    ops = list(operations)
    bodies = {op.body for op in ops if op.body is not NoBody}
    responses = {op.response for op in ops if op.response is not NoContent}
    models = sorted(bodies | responses, key=lambda t: getattr(t, "__name__", str(t)))
    refs, components = msgspec.json.schema_components([Error, *models], ref_template=REF_TEMPLATE)
    schema_of = dict(zip([Error, *models], refs, strict=True))
    paths: dict[str, Any] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema_of)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(op: Operation[Any, Any, Any], schema_of: Mapping[Any, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        document["description"] = op.description
    document["tags"] = list(op.tags)
    document["security"] = [] if op.auth == "public" else [{"bearer": []}]
    parameters = _parameters(op)
    if parameters:
        document["parameters"] = parameters
    if op.body is not NoBody:
        document["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": schema_of[op.body]}},
        }
    answers: dict[str, Any] = {}
    for status, description in [(op.status, op.response_description), *op.other_responses.items()]:
        answers[str(status)] = {"description": description}
        if op.response is not NoContent:
            answers[str(status)]["content"] = {op.media_type: {"schema": schema_of[op.response]}}
    for status in op.errors:
        answers[str(status)] = {
            "description": op.error_descriptions.get(status, ERROR_DESCRIPTIONS[status]),
            "content": {"application/json": {"schema": schema_of[Error]}},
        }
    document["responses"] = answers
    return document


def _parameters(op: Operation[Any, Any, Any]) -> list[dict[str, Any]]:
    (ref,), components = msgspec.json.schema_components([op.params], ref_template=REF_TEMPLATE)
    schema = components[ref["$ref"].rsplit("/", 1)[-1]]
    in_path = set(re.findall(r"{(\w+)}", op.path))
    required = set(schema.get("required", ()))
    parameters = []
    for name, prop in schema.get("properties", {}).items():
        parameter: dict[str, Any] = {
            "name": name,
            "in": "path" if name in in_path else "query",
            "required": name in in_path or name in required,
            "schema": _without_null(prop),
        }
        if "description" in prop:
            parameter["description"] = prop["description"]
        parameters.append(parameter)
    return parameters


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None = None`` means "may be left out" in a query string; null cannot be sent."""
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    if "anyOf" not in schema or len(options) != 1:
        return schema
    merged = {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
    if merged.get("default", "") is None:
        del merged["default"]
    return merged


def document_operation(operations: Sequence[Operation[Any, Any, Any]]) -> Operation[Any, Any, Any]:
    """The ``/openapi.json`` operation: the document of ``operations`` and of itself, built once."""
    encoded: list[bytes] = []

    @operation("GET", "/openapi.json", params=NoParams, body=NoBody, response=dict[str, Any],
               operation_id="openapi", summary="This document", response_description="OpenAPI 3.1",
               tags=("meta",), auth="public")  # fmt: skip
    async def openapi(call: Call[NoParams, NoBody]) -> Response:
        return Response(encoded[0], media_type="application/json")

    document = openapi_document(
        [*operations, openapi],
        title="fmhl-ops",
        version=__version__,
        description="Operations plane: probes, metrics, admin API",
    )
    encoded.append(msgspec.json.encode(document))
    return openapi

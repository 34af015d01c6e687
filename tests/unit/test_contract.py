"""``service/contract.py``: strict decoding, the generated document, names said once, drift caught.

No I/O: the decoders run on built requests, the document is built from the route modules, and the
drift check runs schemathesis against an in-process ASGI app.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from msgspec import Meta, Struct
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import openapi
from service.app import api_operations
from service.contract import Call, NoBody, NoParams, decode_body, decode_params, operation
from service.openapi import openapi_document
from service.routes.dlq import BulkRetryBody, DlqQuery, EntryRef
from shared.dlq.reasons import DLQ_REASONS, FAILURE_REASONS, RESOLUTIONS
from shared.infra.errors import Invalid
from shared.jobs.queues import ALL_QUEUES

REPO = Path(__file__).resolve().parents[2]


def _request(query: str = "", path_params: dict[str, str] | None = None) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "query_string": query.encode(),
        "headers": [],
        "path_params": path_params or {},
    }
    return Request(scope)


def _invalid(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(Invalid) as caught:
        call(*args, **kwargs)
    return caught.value.message


# -- parameters ----------------------------------------------------------------------------------
def test_query_parameters_decode_into_the_model_with_lax_scalars() -> None:
    query = decode_params(_request("queue=email_send&resolved=TRUE&limit=7&q=disk%20full"), DlqQuery)
    assert (query.queue, query.resolved, query.limit, query.q) == ("email_send", True, 7, "disk full")
    assert decode_params(_request("resolved=0"), DlqQuery).resolved is False
    assert decode_params(_request("q=null&cursor=1"), DlqQuery).q == "null"  # text stays text
    assert decode_params(_request(""), DlqQuery).limit == 20


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("unknown=1", "unknown query parameter(s): unknown"),
        ("limit=5&limit=6", "query parameter limit given more than once"),
        ("limit=1.5", "limit must be an integer between 1 and 100"),
        ("limit=1e2", "limit must be an integer between 1 and 100"),
        ("limit=+5", "limit must be an integer between 1 and 100"),
        ("limit=%D9%A5", "limit must be an integer between 1 and 100"),  # an Arabic-Indic five
        ("limit=" + "9" * 5000, "limit must be an integer between 1 and 100"),
        ("limit=0", "limit: expected int >= 1"),
        ("resolved=maybe", "resolved must be true or false"),
        ("resolved=", "resolved must be true or false"),
        ("queue=null", "queue must be one of " + ", ".join(ALL_QUEUES)),
        ("queue=nope", "queue must be one of " + ", ".join(ALL_QUEUES)),
        ("q=", "q: expected str of length >= 1"),
        ("q=disk%00full", "q must not contain NUL characters"),
    ],
)
def test_bad_query_parameters_are_invalid_with_a_sentence_naming_the_parameter(query: str, said: str) -> None:
    assert _invalid(decode_params, _request(query), DlqQuery) == said


def test_an_invalid_value_is_never_echoed_back() -> None:
    hostile = "<script>" + "x" * 10_000
    message = _invalid(decode_params, _request(f"queue={hostile}"), DlqQuery)
    assert "script" not in message and len(message) < 200


def test_path_parameters_decode_through_the_same_model() -> None:
    entry_id = uuid.uuid4()
    assert decode_params(_request(path_params={"entry_id": str(entry_id)}), EntryRef).entry_id == entry_id
    assert _invalid(decode_params, _request(path_params={"entry_id": "nope"}), EntryRef) == (
        "entry_id: invalid UUID"
    )
    # a query parameter may not shadow a path parameter
    shadow = _request(f"entry_id={uuid.uuid4()}", {"entry_id": str(entry_id)})
    assert _invalid(decode_params, shadow, EntryRef) == "unknown query parameter(s): entry_id"
    assert _invalid(decode_params, _request("x=1"), NoParams) == "unknown query parameter(s): x"


# -- bodies --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"", "request body must be a JSON object"),
        (b"not json", "request body is not valid JSON"),
        (b"\xff\xfe", "request body is not valid JSON"),
        (b'"\\ud800"', "request body is not valid JSON"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b"null", "request body must be a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "request body must be a JSON object"),
        (b'{"extra": 1}', "unknown field(s): extra"),
        (b'{"ids": "abc"}', "ids: expected array | null, got str"),
        (b'{"ids": ["nope"]}', "ids[0]: invalid UUID"),
        (b'{"max": true}', "max: expected int | null, got bool"),
        (b'{"max": "5"}', "max: expected int | null, got str"),
        (b'{"max": 1.5}', "max: expected int | null, got float"),
        (b'{"max": 1001}', "max: expected int <= 1000"),
        (b'{"max": 1e400}', "max: number out of range"),
        (b'{"queue": "nope"}', "queue must be one of " + ", ".join(ALL_QUEUES)),
        (b'{"fingerprint": "fp\\u0000"}', "request body must not contain NUL characters (\\u0000)"),
    ],
)
def test_bad_bodies_are_invalid_with_a_sentence_naming_the_field(raw: bytes, said: str) -> None:
    assert _invalid(decode_body, raw, BulkRetryBody) == said


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    assert decode_body(b'{"fingerprint": "a\\\\u0000"}', BulkRetryBody).fingerprint == "a\\u0000"


def test_no_body_takes_nothing_or_an_empty_object_only() -> None:
    assert decode_body(b"", NoBody) == NoBody() == decode_body(b" {} ", NoBody)
    assert _invalid(decode_body, b'{"force": true}', NoBody) == "unknown field(s): force"
    assert _invalid(decode_body, b"[]", NoBody) == "request body must be a JSON object"


# -- the document --------------------------------------------------------------------------------
# Every operation the hand-written document had before the contract (issue 16), with its security
# and declared error statuses: none may be lost.
BEFORE: dict[tuple[str, str], tuple[str, bool, set[str]]] = {
    ("GET", "/health/live"): ("liveness", False, set()),
    ("GET", "/health/ready"): ("readiness", False, {"503"}),
    ("GET", "/metrics"): ("metrics", False, set()),
    ("GET", "/openapi.json"): ("openapi", False, set()),
    ("POST", "/api/v1/auth/login"): ("login", False, {"400", "401", "413", "429", "503"}),
    ("POST", "/api/v1/auth/logout"): ("logout", True, {"401", "503"}),
    ("GET", "/api/v1/admin/whoami"): ("whoami", True, {"401", "403", "503"}),
    ("GET", "/api/v1/admin/queues"): ("listQueues", True, {"400", "401", "403", "503"}),
    ("GET", "/api/v1/admin/audit"): ("listAuditLog", True, {"400", "401", "403", "503"}),
    ("GET", "/api/v1/admin/queues/dlq"): ("listDlqEntries", True, {"400", "401", "403", "503"}),
    ("GET", "/api/v1/admin/queues/dlq/groups"): ("listDlqGroups", True, {"400", "401", "403", "503"}),
    ("GET", "/api/v1/admin/queues/dlq/rejected"): (
        "listRejectedDlqRecords",
        True,
        {"400", "401", "403", "503"},
    ),
    ("POST", "/api/v1/admin/queues/dlq/retry"): (
        "bulkRetryDlqEntries",
        True,
        {"400", "401", "403", "413", "503"},
    ),
    ("GET", "/api/v1/admin/queues/dlq/{entry_id}"): (
        "getDlqEntry",
        True,
        {"400", "401", "403", "404", "503"},
    ),
    ("POST", "/api/v1/admin/queues/dlq/{entry_id}/retry"): (
        "retryDlqEntry",
        True,
        {"400", "401", "403", "404", "409", "413", "503"},
    ),
    ("POST", "/api/v1/admin/queues/dlq/{entry_id}/resolve"): (
        "resolveDlqEntry",
        True,
        {"400", "401", "403", "404", "409", "413", "503"},
    ),
}


def _document() -> dict[str, Any]:
    operations = api_operations()
    return openapi_document(
        [*operations, openapi.document_operation(operations)], title="t", version="0", description="d"
    )


def test_every_operation_keeps_its_id_security_and_declared_errors() -> None:
    paths = _document()["paths"]
    for (method, path), (operation_id, secured, errors) in BEFORE.items():
        op = paths[path][method.lower()]
        assert op["operationId"] == operation_id
        assert op["summary"]
        assert op["security"] == ([{"bearer": []}] if secured else []), (method, path)
        assert errors <= set(op["responses"]), (method, path)


def test_enums_in_the_document_come_from_shared() -> None:
    schemas = _document()["components"]["schemas"]
    entry = schemas["DlqEntry"]["properties"]
    assert entry["queue"]["enum"] == sorted(ALL_QUEUES)
    assert entry["reason"]["enum"] == sorted(DLQ_REASONS)
    assert entry["resolution"]["anyOf"][0]["enum"] == sorted(RESOLUTIONS)


def test_no_name_is_typed_out_again_in_service() -> None:
    """Queue names, failure reasons and resolutions live in ``shared``; ``service`` imports them."""
    names = {*ALL_QUEUES, *DLQ_REASONS}
    offenders = []
    for path in sorted((REPO / "service").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(re.search(rf"[\"']{name}[\"']", line) for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders


def test_the_sql_check_constraints_hold_the_same_names() -> None:
    sql = (REPO / "sql" / "001_initial.sql").read_text()

    def listed(column: str) -> set[str]:
        found = re.search(rf"{column}\s+text[^,]*?CHECK \({column} IN \((.*?)\)\)", sql, re.S)
        assert found, column
        return set(re.findall(r"'([a-z_]+)'", found.group(1)))

    assert listed("queue_name") == set(ALL_QUEUES)
    # 001 holds the failure reasons; sql/005 widens the check (tests/unit/test_dlq_reasons.py).
    assert listed("reason") == set(FAILURE_REASONS) - {"poison"}
    assert listed("resolution") == set(RESOLUTIONS)


# -- a response that leaves its declared schema is caught ---------------------------------------
@dataclass(frozen=True, slots=True)
class Thing:
    name: str
    size: Annotated[int, Meta(ge=0)]


class ThingQuery(Struct, forbid_unknown_fields=True):
    size: Annotated[int, Meta(ge=0, le=10)] = 1


@operation("GET", "/things/good", params=ThingQuery, body=NoBody, response=Thing, operation_id="good",
           summary="typed answer", tags=("test",), auth="public")  # fmt: skip
async def good(call: Call[ThingQuery, NoBody]) -> Thing:
    return Thing("a", call.params.size)


@operation("GET", "/things/drifted", params=ThingQuery, body=NoBody, response=Thing, operation_id="drifted",
           summary="hand-made answer", tags=("test",), auth="public")  # fmt: skip
async def drifted(call: Call[ThingQuery, NoBody]) -> Response:
    return JSONResponse({"name": "a", "size": str(call.params.size)})  # the escape hatch, drifted


def _conformance_failures(operation_id: str) -> int:
    operations = [good, drifted]
    app = Starlette(routes=[op.route() for op in [*operations, openapi.document_operation(operations)]])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    (op,) = [
        r.ok() for r in schema.get_all_operations() if r.ok().definition.raw["operationId"] == operation_id
    ]
    failures = []

    @hypothesis_settings(max_examples=5, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=op.as_strategy())
    def check(case: Any) -> None:
        response = case.call()
        try:
            case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(exc)

    check()
    return len(failures)


def test_schemathesis_conformance_catches_a_response_that_leaves_its_schema() -> None:
    assert _conformance_failures("good") == 0  # the control
    assert _conformance_failures("drifted") > 0


def test_responses_encode_with_msgspec_as_declared() -> None:
    assert msgspec.json.decode(msgspec.json.encode(Thing("a", 1))) == {"name": "a", "size": 1}

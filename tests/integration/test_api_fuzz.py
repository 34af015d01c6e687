"""Drive every documented operation with hostile input, as a generic fuzzer would.

The cases come from ``/openapi.json`` itself (paths, methods, declared parameters), with a fixed
random seed so a failure reproduces. Whatever the input: never a 500, and every error response
is the JSON error shape.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from typing import Any
from urllib.parse import quote

import orjson
from cryptography.fernet import Fernet

from shared.infra.config import Settings
from tests.factories import create_admin, create_admin_session, create_dlq_entry
from tests.helpers import running_app

SEED = 20261128
CASES_PER_OPERATION = 25
JUNK_STRINGS = [
    "",
    " ",
    "abc",
    "-1",
    "0",
    "101",
    "true",
    "null",
    "ü€",
    "'; DROP TABLE users; --",
    "%00",
    "x" * 300,
]


def _junk_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            rng.choice(JUNK_STRINGS),
            rng.randint(-(2**40), 2**40),
            rng.random(),
            None,
            True,
            [rng.choice(JUNK_STRINGS)],
            {"nested": rng.choice(JUNK_STRINGS)},
            str(uuid.uuid4()),
        ]
    )


def _body(rng: random.Random, schema: dict[str, Any] | None) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.choice([b"", b"{", b"[]", b"null", b'"text"', b"\xff\xfe"])
    properties = list((schema or {}).get("properties", {})) or ["ids", "email", "note"]
    body = {name: _junk_value(rng) for name in rng.sample(properties, k=rng.randint(0, len(properties)))}
    if choice == 1:
        body["unexpected_field"] = _junk_value(rng)
    return orjson.dumps(body)


def _request_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema: dict[str, Any] | None = content.get("schema")
    return schema


def _cases(spec: dict[str, Any], rng: random.Random) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    cases = []
    for template, operations in sorted(spec["paths"].items()):
        for method, operation in sorted(operations.items()):
            declared = [p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"]
            for _ in range(CASES_PER_OPERATION):
                path = template
                if "{" in template:
                    raw = rng.choice([str(uuid.uuid4()), rng.choice(JUNK_STRINGS) or "x", "123"])
                    path = template.split("{")[0] + quote(raw, safe="") + template.split("}")[1]
                params = {name: str(_junk_value(rng)) for name in declared if rng.random() < 0.6}
                if rng.random() < 0.2:
                    params["unknown_param"] = "1"
                body = _body(rng, _request_schema(operation)) if method == "post" else None
                cases.append((method.upper(), path, params, body))
    return cases


async def test_no_input_produces_a_500_or_a_non_json_error(settings: Settings, clean_db: Any) -> None:
    keyed = dataclasses.replace(settings, mfa_encryption_key=Fernet.generate_key().decode())
    assert keyed.mfa_encryption_key
    admin = await create_admin(clean_db, mfa_encryption_key=keyed.mfa_encryption_key)
    token = await create_admin_session(clean_db, admin.user_id)
    await create_dlq_entry(clean_db)
    rng = random.Random(SEED)
    async with running_app(keyed) as (_, client):
        spec = (await client.get("/openapi.json")).json()
        cases = _cases(spec, rng)
        assert len(cases) >= 10 * CASES_PER_OPERATION
        statuses: dict[int, int] = {}
        for method, path, params, body in cases:
            headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
            response = await client.request(method, path, params=params, content=body, headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500 or response.status_code == 503, (method, path, params, body)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"code", "message"} and error["code"] and error["message"]
    assert statuses.get(400, 0) > 0 and (statuses.get(200, 0) + statuses.get(202, 0)) > 0
    assert 500 not in statuses

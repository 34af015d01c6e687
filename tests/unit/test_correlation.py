from __future__ import annotations

import uuid

import pytest

from shared.infra.correlation import accept_or_new


@pytest.mark.parametrize("value", ["abc", "A.b-c_9", "x" * 128, "req-123.4"])
def test_valid_ids_are_kept(value: str) -> None:
    assert accept_or_new(value) == value


@pytest.mark.parametrize("value", [None, "", "x" * 129, "has space", "semi;colon", "ünï", "a/b"])
def test_invalid_ids_are_replaced_by_a_uuid(value: str | None) -> None:
    replaced = accept_or_new(value)
    assert replaced != value
    assert str(uuid.UUID(replaced)) == replaced


def test_new_request_ids_are_random_version_4_uuids() -> None:
    from shared.infra.correlation import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122

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

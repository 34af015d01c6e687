from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.dlq.fingerprint import fingerprint, mask_message, top_app_frame

TEMPLATES = st.sampled_from(
    [
        "lead {} not found",
        "provider {} has balance {} below price",
        "timeout after {} ms talking to {}",
        "assignment {} already refunded at {}",
    ]
)
VOLATILE = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.uuids().map(str),
    st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: f"{f:.2f}"),
    st.text(alphabet="abcdef0123456789", min_size=12, max_size=32).filter(
        lambda s: any(c.isdigit() for c in s) and any(c.isalpha() for c in s)
    ),
)


@given(TEMPLATES, st.lists(VOLATILE, min_size=2, max_size=2), st.lists(VOLATILE, min_size=2, max_size=2))
def test_messages_differing_only_in_numbers_and_ids_share_a_fingerprint(
    template: str, first: list[str], second: list[str]
) -> None:
    a = template.format(*first[: template.count("{}")])
    b = template.format(*second[: template.count("{}")])
    assert fingerprint("ValueError", a, "shared.x:f") == fingerprint("ValueError", b, "shared.x:f")


@given(
    st.from_regex(r"[A-Z][A-Za-z]{2,20}Error", fullmatch=True),
    st.from_regex(r"[A-Z][A-Za-z]{2,20}Error", fullmatch=True),
    st.text(max_size=80),
)
def test_different_error_types_never_share_a_fingerprint(type_a: str, type_b: str, message: str) -> None:
    if type_a != type_b:
        assert fingerprint(type_a, message) != fingerprint(type_b, message)


def test_masking_covers_uuids_hex_quotes_and_numbers() -> None:
    message = f"lead {uuid.uuid4()} id deadbeef1234 value 'secret' n=42 at 0x7f3a"
    assert mask_message(message) == "lead <*> id <*> value <*> n=<*> at <*>"


def test_fingerprint_is_stable_and_frame_sensitive() -> None:
    assert fingerprint("KeyError", "x 1", "shared.a:f") == fingerprint("KeyError", "x 2", "shared.a:f")
    assert fingerprint("KeyError", "x", "shared.a:f") != fingerprint("KeyError", "x", "shared.b:g")
    assert len(fingerprint("KeyError", "x")) == 16


def test_top_app_frame_is_the_innermost_frame_in_our_packages() -> None:
    from shared.infra.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings({"DLQ_RETENTION_DAYS": "x"})
    assert top_app_frame(info.value.__traceback__) == "shared.infra.config:_parse"

"""Email templates: rendering, missing context, unknown names, and no format-string tricks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.email.templates import (
    TEMPLATES,
    UnknownTemplate,
    placeholders,
    render,
    required_context,
    template_names,
)
from shared.infra.errors import Invalid

ROOT = Path(__file__).resolve().parents[2]

CONTEXTS: dict[str, dict[str, object]] = {
    "lead_assigned": {
        "provider_name": "Acme",
        "lead_id": "L-1",
        "assignment_id": "A-1",
        "price": "10.00",
        "source": "web",
    },
    "report_ready": {"provider_name": "Acme", "export_id": "E-1", "row_count": 42},
    "low_balance": {"provider_name": "Acme", "balance": "4.00", "lead_price": "10.00"},
}


def test_templates_are_exactly_those_the_outbox_accepts() -> None:
    schema = (ROOT / "sql" / "001_initial.sql").read_text(encoding="utf-8")
    match = re.search(r"template\s+text NOT NULL CHECK \(template IN \(([^)]*)\)\)", schema)
    assert match is not None
    allowed = {name.strip().strip("'") for name in match.group(1).split(",")}
    assert set(template_names()) == allowed == set(CONTEXTS)


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_every_template_renders_with_its_context(name: str) -> None:
    assert required_context(name) == frozenset(CONTEXTS[name])
    rendered = render(name, CONTEXTS[name])
    assert rendered.template == name
    assert rendered.subject and "\n" not in rendered.subject
    assert "Hello Acme" in rendered.body
    assert "{" not in rendered.body and "}" not in rendered.body


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_placeholders_are_plain_names(name: str) -> None:
    template = TEMPLATES[name]
    assert all(field.isidentifier() for field in placeholders(template.subject) | placeholders(template.body))


def test_report_ready_body() -> None:
    body = render("report_ready", CONTEXTS["report_ready"]).body
    assert "Your lead inbox export E-1 is ready: 42 rows." in body


def test_missing_context_key_is_invalid_and_names_the_key() -> None:
    context = dict(CONTEXTS["lead_assigned"])
    del context["price"]
    with pytest.raises(Invalid, match="'price'") as caught:
        render("lead_assigned", context)
    assert caught.value.code == "missing_context"
    assert not isinstance(caught.value, UnknownTemplate)


def test_unknown_template_is_an_invalid_with_its_own_code() -> None:
    with pytest.raises(UnknownTemplate) as caught:
        render("welcome", {})
    assert isinstance(caught.value, Invalid)
    assert caught.value.code == "unknown_template"


def test_context_values_are_inserted_verbatim_never_re_expanded() -> None:
    context = dict(CONTEXTS["lead_assigned"]) | {"provider_name": "{price.__class__} {0} {{x}}"}
    body = render("lead_assigned", context).body
    assert "Hello {price.__class__} {0} {{x}}," in body


def test_line_breaks_in_subject_values_cannot_inject_headers() -> None:
    context = dict(CONTEXTS["lead_assigned"]) | {"lead_id": "L-1\r\nBcc: victim@example.test"}
    subject = render("lead_assigned", context).subject
    assert "\r" not in subject and "\n" not in subject
    assert subject == "New lead assigned to you (L-1 Bcc: victim@example.test)"


def test_extra_context_keys_are_ignored() -> None:
    rendered = render("report_ready", CONTEXTS["report_ready"] | {"unused": "x"})
    assert "x" not in rendered.subject

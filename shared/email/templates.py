"""The email templates ``send_email`` knows: subject and plain-text body per template name.

Rendering is deliberately narrower than ``str.format_map``: a placeholder is a bare name
(``{provider_name}``), never an attribute or index lookup (``{x.__class__}``, ``{x[0]}``), and
every value is rendered with ``str()``. A placeholder missing from the context raises
``Invalid``; an unknown template name raises ``UnknownTemplate`` (an ``Invalid``, so the worker
treats both as permanent: retrying cannot fix the job's arguments). Line breaks in subject
values are collapsed to spaces so a context value can never inject an email header.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shared.infra.errors import Invalid


class UnknownTemplate(Invalid):
    code = "unknown_template"


@dataclass(frozen=True, slots=True)
class EmailTemplate:
    name: str
    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    template: str
    subject: str
    body: str


TEMPLATES: Final[Mapping[str, EmailTemplate]] = {
    t.name: t
    for t in (
        EmailTemplate(
            name="lead_assigned",
            subject="New lead assigned to you ({lead_id})",
            body=(
                "Hello {provider_name},\n\n"
                "A new lead from {source} has been assigned to you.\n\n"
                "Lead: {lead_id}\n"
                "Assignment: {assignment_id}\n"
                "Price charged: {price}\n\n"
                "If this lead is bad, report it and the price is refunded to your balance.\n\n"
                "-- Find Me A Hot Lead\n"
            ),
        ),
        EmailTemplate(
            name="report_ready",
            subject="Your lead report is ready",
            body=(
                "Hello {provider_name},\n\n"
                "Your lead inbox export {export_id} is ready: {row_count} rows.\n\n"
                "-- Find Me A Hot Lead\n"
            ),
        ),
        EmailTemplate(
            name="low_balance",
            subject="Your balance is too low to receive leads",
            body=(
                "Hello {provider_name},\n\n"
                "Your balance is {balance}, below your lead price of {lead_price}, so you will not\n"
                "receive new leads until you top up. Distribution resumes automatically after a top-up.\n\n"
                "-- Find Me A Hot Lead\n"
            ),
        ),
    )
}

_FORMATTER: Final = string.Formatter()


def template_names() -> tuple[str, ...]:
    return tuple(sorted(TEMPLATES))


def placeholders(text: str) -> frozenset[str]:
    """Names used as ``{placeholder}`` in ``text``."""
    return frozenset(field for _, field, _, _ in _FORMATTER.parse(text) if field is not None)


def required_context(template: str) -> frozenset[str]:
    """Context keys a template needs (subject and body)."""
    found = _lookup(template)
    return placeholders(found.subject) | placeholders(found.body)


def render(template: str, context: Mapping[str, object]) -> RenderedEmail:
    """Render ``template`` with ``context``; ``UnknownTemplate`` or ``Invalid`` on bad input."""
    found = _lookup(template)
    subject = " ".join(_substitute(found, found.subject, context).split())
    return RenderedEmail(template=found.name, subject=subject, body=_substitute(found, found.body, context))


def _lookup(template: str) -> EmailTemplate:
    found = TEMPLATES.get(template)
    if found is None:
        raise UnknownTemplate(f"unknown email template {template!r}; known: {', '.join(template_names())}")
    return found


def _substitute(found: EmailTemplate, text: str, context: Mapping[str, object]) -> str:
    parts: list[str] = []
    for literal, field, _spec, _conversion in _FORMATTER.parse(text):
        parts.append(literal)
        if field is None:
            continue
        if not field.isidentifier():  # our own templates only; guarded by a unit test too
            raise Invalid(f"template {found.name!r} has an invalid placeholder {field!r}")
        if field not in context:
            raise Invalid(f"template {found.name!r} needs context key {field!r}", code="missing_context")
        parts.append(str(context[field]))
    return "".join(parts)

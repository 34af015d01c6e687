"""Sending transactional email exactly once per idempotency key, through the ``email_outbox``.

Backends (``settings.email_backend``): ``log`` records the email in the outbox and logs an
``email_sent`` event (recipient and subject only, never the body); ``smtp`` also hands it to the
SMTP server at ``settings.smtp_host:smtp_port`` with the standard library (plain SMTP, no auth:
the relay is expected to be a sidecar or an internal MTA).

How "never sent twice" works, and the one window where it cannot be absolute:

1. ``INSERT ... ON CONFLICT (idempotency_key) DO NOTHING`` commits a ``pending`` row, so every
   attempt leaves a trace an operator can see even if the process dies right after.
2. In one transaction, the row is locked ``FOR UPDATE``. A concurrent sender of the same key
   waits on that lock and then sees ``sent`` (outcome ``duplicate``): two workers never both send.
   Already ``sent`` → ``duplicate``, nothing is sent. The lock (and one pool connection) is held
   while the message is delivered, bounded by ``SMTP_TIMEOUT_SECONDS`` per SMTP operation.
3. The message is sent, then the row is marked ``sent`` and the transaction commits.

The crash window is between the SMTP server accepting the message and the commit of step 3
(the process is killed, or Postgres drops the connection). The row is then still ``pending``, and
we cannot know whether the message left. We choose **at-least-once**: a retry finds ``pending``
and sends again. A lost "you were charged for this lead" notice costs a provider more than a rare
duplicate does. To let mail systems fold such a duplicate, every attempt of one outbox row uses the
same ``Message-ID`` (derived from the row id) and carries ``X-FMHL-Idempotency-Key``.

Failures: a 5xx SMTP reply raises ``EmailRejected`` (a domain error: permanent, the job goes to
the DLQ); connection problems and 4xx replies raise ``EmailTemporaryFailure`` (a
``ConnectionError``: transient, the job is retried). The row stays ``pending`` in both cases.
"""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Final, Literal

from arq.connections import ArqRedis

from shared.email.templates import TEMPLATES, RenderedEmail, UnknownTemplate, render
from shared.infra.config import Settings
from shared.infra.db import Conn, execute, fetch, fetchrow
from shared.infra.errors import Conflict, DomainError, Invalid
from shared.infra.logs import log_event
from shared.infra.metrics import Metrics
from shared.jobs.enqueue import enqueue

SMTP_TIMEOUT_SECONDS: Final = 30.0
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 200

EmailOutcome = Literal["sent", "duplicate"]


class EmailRejected(DomainError):
    """The SMTP server refused the message for good (5xx)."""

    code = "email_rejected"


class EmailTemporaryFailure(ConnectionError):
    """The SMTP server could not be reached or asked us to try later (4xx)."""


@dataclass(frozen=True, slots=True)
class EmailResult:
    outbox_id: uuid.UUID
    idempotency_key: str
    to: str
    template: str
    backend: str
    outcome: EmailOutcome


def email_job_id(idempotency_key: str) -> str:
    """The arq job id of a ``send_email`` job: one job per idempotency key while arq remembers it."""
    return f"email:{idempotency_key}"


async def enqueue_email(
    redis: ArqRedis,
    metrics: Metrics | None,
    *,
    to: str,
    template: str,
    context: Mapping[str, Any],
    idempotency_key: str,
) -> str | None:
    """Enqueue one ``send_email`` job; ``None`` when arq already holds a job with that id."""
    return await enqueue(
        redis,
        "send_email",
        metrics=metrics,
        job_id=email_job_id(idempotency_key),
        to=to,
        template=template,
        context=dict(context),
        idempotency_key=idempotency_key,
    )


SELECT_SENT_KEYS = """
SELECT idempotency_key FROM email_outbox
WHERE idempotency_key = ANY($1::text[]) AND status = 'sent'
"""


async def sent_idempotency_keys(conn: Conn, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` already have a sent email (callers re-enqueue only the others)."""
    rows = await fetch(conn, "email_outbox_sent_keys", SELECT_SENT_KEYS, list(keys))
    return {row["idempotency_key"] for row in rows}


INSERT_PENDING = """
INSERT INTO email_outbox (idempotency_key, to_address, template, context, subject, body, backend)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (idempotency_key) DO NOTHING
"""

LOCK_OUTBOX_ROW = """
SELECT id, to_address, template, subject, body, status
FROM email_outbox WHERE idempotency_key = $1
FOR UPDATE
"""

MARK_SENT = """
UPDATE email_outbox SET status = 'sent', sent_at = now(), backend = $2 WHERE id = $1
"""


async def send_email(
    pool: Any,
    settings: Settings,
    metrics: Metrics,
    *,
    to: str,
    template: str,
    context: Mapping[str, Any],
    idempotency_key: str,
) -> EmailResult:
    """Render ``template`` and send it to ``to`` at most once per ``idempotency_key`` (see module doc)."""
    template_label = template if template in TEMPLATES else "unknown"
    try:
        _validate(to, idempotency_key, settings.email_backend)
        rendered = render(template, context)
        result = await _send_once(pool, settings, to, rendered, dict(context), idempotency_key)
    except Exception as exc:
        metrics.inc(metrics.emails_sent_total, {"template": template_label, "status": "failed"})
        log_event(
            "WARNING",
            "email_send_failed",
            template=template_label,
            idempotency_key=idempotency_key,
            error_type=type(exc).__name__,
        )
        raise
    metrics.inc(metrics.emails_sent_total, {"template": template_label, "status": result.outcome})
    return result


def _validate(to: str, idempotency_key: str, backend: str) -> None:
    local, _, domain = to.partition("@")
    if not local or not domain or any(c.isspace() or c in ",;<>" for c in to):
        raise Invalid("recipient must be one plain email address", code="invalid_recipient")
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise Invalid(f"idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_LENGTH} characters")
    if backend not in ("log", "smtp"):
        raise Invalid(f"unknown email backend {backend!r}")


async def _send_once(
    pool: Any,
    settings: Settings,
    to: str,
    rendered: RenderedEmail,
    context: dict[str, Any],
    idempotency_key: str,
) -> EmailResult:
    backend = settings.email_backend
    async with pool.acquire() as conn:
        await execute(
            conn,
            "email_outbox_insert_pending",
            INSERT_PENDING,
            idempotency_key,
            to,
            rendered.template,
            context,
            rendered.subject,
            rendered.body,
            backend,
        )
        async with conn.transaction():
            row = await fetchrow(conn, "email_outbox_lock", LOCK_OUTBOX_ROW, idempotency_key)
            if row["to_address"] != to or row["template"] != rendered.template:
                raise Conflict(
                    "idempotency key already used for a different recipient or template",
                    code="idempotency_key_reused",
                )
            outbox_id: uuid.UUID = row["id"]
            if row["status"] == "sent":
                return EmailResult(outbox_id, idempotency_key, to, rendered.template, backend, "duplicate")
            # What was recorded is what is sent: a resend uses the stored subject and body.
            stored = RenderedEmail(rendered.template, row["subject"], row["body"])
            if backend == "smtp":
                message = _message(settings.smtp_from, to, stored, outbox_id, idempotency_key)
                await asyncio.to_thread(_smtp_send, settings.smtp_host, settings.smtp_port, message)
            await execute(conn, "email_outbox_mark_sent", MARK_SENT, outbox_id, backend)
    log_event(
        "INFO",
        "email_sent",
        to=to,
        subject=stored.subject,
        template=rendered.template,
        backend=backend,
        idempotency_key=idempotency_key,
        outbox_id=str(outbox_id),
    )
    return EmailResult(outbox_id, idempotency_key, to, rendered.template, backend, "sent")


def _message(
    sender: str, to: str, rendered: RenderedEmail, outbox_id: uuid.UUID, idempotency_key: str
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = rendered.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{outbox_id}@fmhl-ops>"
    message["X-FMHL-Idempotency-Key"] = idempotency_key
    message.set_content(rendered.body)
    return message


def _smtp_send(host: str, port: int, message: EmailMessage) -> None:
    """Blocking SMTP delivery; run in a thread. Maps failures to permanent/transient errors."""
    try:
        with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT_SECONDS) as client:
            client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        if codes and all(500 <= code < 600 for code in codes):
            raise EmailRejected("the SMTP server refused the recipient") from exc
        raise EmailTemporaryFailure("the SMTP server deferred the recipient") from exc
    except smtplib.SMTPResponseException as exc:
        if 500 <= exc.smtp_code < 600:
            raise EmailRejected(f"the SMTP server rejected the message ({exc.smtp_code})") from exc
        raise EmailTemporaryFailure(f"the SMTP server deferred the message ({exc.smtp_code})") from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise EmailTemporaryFailure(f"SMTP delivery failed: {type(exc).__name__}") from exc


__all__ = [
    "EmailRejected",
    "EmailResult",
    "EmailTemporaryFailure",
    "UnknownTemplate",
    "email_job_id",
    "enqueue_email",
    "send_email",
    "sent_idempotency_keys",
]

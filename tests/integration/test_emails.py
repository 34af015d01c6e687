"""send_email over real Postgres and a real local SMTP server (aiosmtpd): sent once per key."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from loguru import logger

from shared.email.outbox import EmailRejected, EmailTemporaryFailure, send_email
from shared.email.templates import UnknownTemplate
from shared.infra.config import Settings
from shared.infra.errors import Conflict, Invalid
from shared.infra.metrics import Metrics
from tests.helpers import closed_port
from tests.smtp import smtp_server

CONTEXT = {
    "provider_name": "Acme Plumbing",
    "lead_id": "7d3c0f2e-0000-4000-8000-000000000001",
    "assignment_id": "7d3c0f2e-0000-4000-8000-000000000002",
    "price": "10.00",
    "source": "web",
}


class CollectingHandler:
    """aiosmtpd handler that keeps every message it accepts; can refuse recipients with a 5xx."""

    def __init__(self, *, refuse_recipients: bool = False) -> None:
        self.messages: list[Message] = []
        self.refuse_recipients = refuse_recipients

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.refuse_recipients:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


def smtp_settings(settings: Settings, port: int) -> Settings:
    return dataclasses.replace(
        settings, email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_from="ops@fmhl.test"
    )


def emails_counter(metrics: Metrics, template: str, status: str) -> float:
    counter: Any = metrics.emails_sent_total
    try:
        return float(counter.get({"template": template, "status": status}))
    except KeyError:
        return 0.0


async def outbox_row(pool: Any, key: str) -> Any:
    return await pool.fetchrow("SELECT * FROM email_outbox WHERE idempotency_key = $1", key)


async def test_same_idempotency_key_is_sent_once_over_smtp(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    handler = CollectingHandler()
    with smtp_server(handler) as port:
        configured = smtp_settings(settings, port)
        first = await send_email(
            clean_db,
            configured,
            metrics,
            to="acme@example.test",
            template="lead_assigned",
            context=CONTEXT,
            idempotency_key="lead_assigned:one",
        )
        second = await send_email(
            clean_db,
            configured,
            metrics,
            to="acme@example.test",
            template="lead_assigned",
            context=CONTEXT,
            idempotency_key="lead_assigned:one",
        )

    assert (first.outcome, second.outcome) == ("sent", "duplicate")
    assert first.outbox_id == second.outbox_id
    assert len(handler.messages) == 1
    message = handler.messages[0]
    assert message["To"] == "acme@example.test"
    assert message["From"] == "ops@fmhl.test"
    assert message["Subject"] == f"New lead assigned to you ({CONTEXT['lead_id']})"
    assert message["Message-ID"] == f"<{first.outbox_id}@fmhl-ops>"
    assert message["X-FMHL-Idempotency-Key"] == "lead_assigned:one"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert "Hello Acme Plumbing" in body.decode()
    row = await outbox_row(clean_db, "lead_assigned:one")
    assert (row["status"], row["backend"], row["to_address"]) == ("sent", "smtp", "acme@example.test")
    assert row["sent_at"] is not None
    assert row["context"] == CONTEXT
    assert emails_counter(metrics, "lead_assigned", "sent") == 1
    assert emails_counter(metrics, "lead_assigned", "duplicate") == 1


async def test_concurrent_sends_of_one_key_deliver_once(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    handler = CollectingHandler()
    with smtp_server(handler) as port:
        configured = smtp_settings(settings, port)
        results = await asyncio.gather(
            *(
                send_email(
                    clean_db,
                    configured,
                    metrics,
                    to="acme@example.test",
                    template="report_ready",
                    context={"provider_name": "Acme", "export_id": "e-1", "row_count": 3},
                    idempotency_key="report_ready:e-1",
                )
                for _ in range(3)
            )
        )

    assert sorted(r.outcome for r in results) == ["duplicate", "duplicate", "sent"]
    assert len(handler.messages) == 1


async def test_pending_row_left_by_a_crash_is_sent_again(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    """The documented at-least-once choice: ``pending`` means "maybe not sent", so it is (re)sent."""
    await clean_db.execute(
        """INSERT INTO email_outbox (idempotency_key, to_address, template, subject, body, backend)
           VALUES ('low_balance:p-1', 'acme@example.test', 'low_balance',
                   'stored subject', 'stored body', 'smtp')"""
    )
    handler = CollectingHandler()
    with smtp_server(handler) as port:
        result = await send_email(
            clean_db,
            smtp_settings(settings, port),
            metrics,
            to="acme@example.test",
            template="low_balance",
            context={"provider_name": "Acme", "balance": "5.00", "lead_price": "10.00"},
            idempotency_key="low_balance:p-1",
        )

    assert result.outcome == "sent"
    assert [m["Subject"] for m in handler.messages] == ["stored subject"]  # what was recorded is what is sent
    assert (await outbox_row(clean_db, "low_balance:p-1"))["status"] == "sent"


async def test_unreachable_server_is_a_transient_failure_and_a_retry_sends(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    kwargs: dict[str, Any] = {
        "to": "acme@example.test",
        "template": "lead_assigned",
        "context": CONTEXT,
        "idempotency_key": "lead_assigned:retry",
    }
    with pytest.raises(EmailTemporaryFailure):
        await send_email(clean_db, smtp_settings(settings, closed_port()), metrics, **kwargs)
    assert (await outbox_row(clean_db, "lead_assigned:retry"))["status"] == "pending"
    assert emails_counter(metrics, "lead_assigned", "failed") == 1

    handler = CollectingHandler()
    with smtp_server(handler) as port:
        result = await send_email(clean_db, smtp_settings(settings, port), metrics, **kwargs)
    assert result.outcome == "sent"
    assert len(handler.messages) == 1


async def test_refused_recipient_is_a_permanent_failure(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    with smtp_server(CollectingHandler(refuse_recipients=True)) as port, pytest.raises(EmailRejected):
        await send_email(
            clean_db,
            smtp_settings(settings, port),
            metrics,
            to="nobody@example.test",
            template="lead_assigned",
            context=CONTEXT,
            idempotency_key="lead_assigned:refused",
        )
    assert (await outbox_row(clean_db, "lead_assigned:refused"))["status"] == "pending"
    assert emails_counter(metrics, "lead_assigned", "failed") == 1


async def test_unknown_template_is_permanent_and_writes_nothing(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    with pytest.raises(UnknownTemplate) as caught:
        await send_email(
            clean_db,
            settings,
            metrics,
            to="a@example.test",
            template="welcome",
            context={},
            idempotency_key="k-1",
        )
    assert isinstance(caught.value, Invalid)
    assert await clean_db.fetchval("SELECT count(*) FROM email_outbox") == 0
    assert emails_counter(metrics, "unknown", "failed") == 1  # bounded label, never the raw name


async def test_missing_context_key_is_invalid(clean_db: Any, settings: Settings, metrics: Metrics) -> None:
    with pytest.raises(Invalid, match="provider_name"):
        await send_email(
            clean_db,
            settings,
            metrics,
            to="a@example.test",
            template="report_ready",
            context={"export_id": "e", "row_count": 1},
            idempotency_key="report_ready:e",
        )
    assert await clean_db.fetchval("SELECT count(*) FROM email_outbox") == 0


async def test_key_reused_for_another_recipient_is_a_conflict(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    args: dict[str, Any] = {
        "template": "lead_assigned",
        "context": CONTEXT,
        "idempotency_key": "lead_assigned:c",
    }
    await send_email(clean_db, settings, metrics, to="first@example.test", **args)
    with pytest.raises(Conflict):
        await send_email(clean_db, settings, metrics, to="second@example.test", **args)


async def test_log_backend_writes_the_outbox_and_logs_without_the_body(
    clean_db: Any, settings: Settings, metrics: Metrics
) -> None:
    assert settings.email_backend == "log"
    records: list[Any] = []
    sink_id = logger.add(lambda message: records.append(message.record), level="INFO")
    try:
        key = f"lead_assigned:{uuid.uuid4()}"
        first = await send_email(
            clean_db,
            settings,
            metrics,
            to="acme@example.test",
            template="lead_assigned",
            context=CONTEXT,
            idempotency_key=key,
        )
        second = await send_email(
            clean_db,
            settings,
            metrics,
            to="acme@example.test",
            template="lead_assigned",
            context=CONTEXT,
            idempotency_key=key,
        )
    finally:
        logger.remove(sink_id)

    assert (first.outcome, second.outcome, first.backend) == ("sent", "duplicate", "log")
    row = await outbox_row(clean_db, key)
    assert (row["status"], row["backend"], row["template"]) == ("sent", "log", "lead_assigned")
    assert row["sent_at"] is not None
    assert "Hello Acme Plumbing" in row["body"]
    sent_events = [r for r in records if r["extra"].get("event") == "email_sent"]
    assert len(sent_events) == 1
    extra = sent_events[0]["extra"]
    assert extra["to"] == "acme@example.test"
    assert extra["subject"] == row["subject"]
    assert all("Hello Acme Plumbing" not in str(value) for value in extra.values())
    assert emails_counter(metrics, "lead_assigned", "sent") == 1
    assert emails_counter(metrics, "lead_assigned", "duplicate") == 1


@pytest.mark.parametrize("to", ["", "no-at-sign", "a@b.test, c@d.test", "a@b.test\r\nBcc: x@y.test"])
async def test_recipient_must_be_one_plain_address(
    clean_db: Any, settings: Settings, metrics: Metrics, to: str
) -> None:
    with pytest.raises(Invalid):
        await send_email(
            clean_db, settings, metrics, to=to, template="lead_assigned", context=CONTEXT, idempotency_key="k"
        )

"""OpenTelemetry end to end: real ``fmhl-ops serve`` and ``fmhl-ops worker email_send`` processes
exporting OTLP/HTTP to a receiver in this test, which decodes the protobuf the exporter sends
(``ExportTraceServiceRequest``).

1. Seeding the DLQ entry: a job enqueued with a traceparent (an enqueuing span of some producer)
   runs as its *child*, in the same trace; the DLQ row keeps that trace id and the capturing span
   id, and the job's log lines carry the trace id.
2. The acceptance: ONE API call (the DLQ retry of that entry, whose job fails permanently again)
   gives ONE trace with spans of both processes: the service's HTTP server span, its redrive span,
   its asyncpg and Redis client spans, the worker's process span (a child of the redrive span),
   its DLQ capture span and asyncpg spans. The new DLQ row's trace id is that
   trace's; the worker's span has a Link to the original entry's capturing span (linked, not
   parented); the retried job's log lines carry that trace id.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from cryptography.fernet import Fernet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from cli.embedded import free_port
from shared.jobs.enqueue import enqueue
from tests.factories import create_admin, create_admin_session
from tests.procs import Proc, base_env, wait_http


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    links: tuple[tuple[str, str, str], ...]  # (trace id, span id, attribute fmhl.link)
    attributes: dict[str, Any]


class OtlpReceiver:
    """A tiny OTLP/HTTP trace receiver: POST /v1/traces with protobuf bodies."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = Span(
                        service=attrs.get("service.name", ""),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        links=tuple(
                            (
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                next(
                                    (a.value.string_value for a in link.attributes if a.key == "fmhl.link"),
                                    "",
                                ),
                            )
                            for link in s.links
                        ),
                        attributes={a.key: a.value.string_value or a.value.int_value for a in s.attributes},
                    )
                    with self.lock:
                        self.spans.append(span)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.spans)):
                    return
            time.sleep(0.1)
        with self.lock:
            names = [(s.service, s.name, s.trace_id[:8]) for s in self.spans]
        raise AssertionError(f"timed out waiting for {what}; spans: {names}")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


async def _row(pool: Any, job_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await pool.fetchrow("SELECT * FROM dead_letter_queue WHERE job_id = $1", job_id)
        if row is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"no DLQ row for {job_id}")


def _db_system(span: Span) -> Any:
    return span.attributes.get("db.system") or span.attributes.get("db.system.name")


def _is_db(span: Span) -> bool:
    return _db_system(span) == "postgresql"


def _is_redis(span: Span) -> bool:
    return _db_system(span) == "redis"


async def test_one_failure_followed_end_to_end(
    database_url: str, redis_url: str, redis: Any, clean_db: Any, receiver: OtlpReceiver
) -> None:
    key = Fernet.generate_key().decode()
    env = base_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        MFA_ENCRYPTION_KEY=key,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        TRACE_URL_TEMPLATE="https://tempo.example/trace/{trace_id}",
    )
    port = free_port()
    serve = Proc(["serve", "--host", "127.0.0.1", "--port", str(port), "--drain-seconds", "1"], env).start()
    worker = Proc(["worker", "email_send"], env).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=30, proc=serve)

        # 1. A producer's enqueuing span (trace T, span P): the first try runs as its child.
        producer_trace, producer_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        job_id = await enqueue(
            redis,
            "send_email",
            to="x@example.test",
            template="no_such_template",
            context={},
            idempotency_key="trace-1",
            _traceparent=f"00-{producer_trace}-{producer_span}-01",
        )
        assert job_id is not None
        row = await _row(clean_db, job_id)
        # The run's span ends after its capture's and may come in a later export batch: wait for both.
        receiver.wait_for(
            lambda spans: (
                {"dlq capture", "process send_email"}
                <= {s.name for s in spans if s.trace_id == producer_trace}
            ),
            30,
            "the worker's spans of the first try",
        )
        first = receiver.trace(producer_trace)
        (run,) = [s for s in first if s.name == "process send_email"]
        assert run.parent_span_id == producer_span and run.kind == 5  # SPAN_KIND_CONSUMER
        assert run.service == "fmhl-ops-worker-email_send"
        assert any(_is_db(s) for s in first), [s.name for s in first]  # the capture's INSERT
        assert row["trace_id"] == producer_trace and row["reason"] == "permanent"
        worker_lines = [orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
        captured = [line for line in worker_lines if line.get("event") == "dlq_captured"]
        assert captured and all(line["trace_id"] == producer_trace for line in captured)

        # 2. One API call: a DLQ retry (redrive) of that entry, whose job fails permanently again.
        (first_capture,) = [s for s in first if s.name == "dlq capture"]
        assert row["span_id"] == first_capture.span_id  # the row keeps the capturing span
        admin = await create_admin(clean_db, mfa_encryption_key=key)
        token = await create_admin_session(clean_db, admin.user_id)
        response = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/admin/queues/dlq/{row['id']}/retry",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        retry_job = f"dlq-retry:{row['id']}"
        retry_row = await _row(clean_db, retry_job)
        api_trace_id = retry_row["trace_id"]
        receiver.wait_for(
            lambda spans: (
                any(s.trace_id == api_trace_id and s.name == "dlq redrive" for s in spans)
                and any(s.trace_id == api_trace_id and s.name == "dlq capture" for s in spans)
                and any(s.trace_id == api_trace_id and s.name == "process send_email" for s in spans)
                and any(s.trace_id == api_trace_id and s.kind == 2 for s in spans)
            ),
            30,
            "the API call's trace across the service and the worker",
        )
        one = receiver.trace(api_trace_id)
        service = [s for s in one if s.service == "fmhl-ops"]
        worker_spans = [s for s in one if s.service == "fmhl-ops-worker-email_send"]
        assert len(service) + len(worker_spans) == len(one), {s.service for s in one}
        (server,) = [s for s in service if s.kind == 2]  # SPAN_KIND_SERVER: the HTTP request
        assert server.parent_span_id == ""  # the trace's root: the API call
        (redrive,) = [s for s in service if s.name == "dlq redrive"]
        assert any(_is_db(s) for s in service)  # asyncpg: the locking SELECT, the UPDATE
        assert any(_is_redis(s) for s in service), [(s.name, s.attributes) for s in service]  # the enqueue
        (rerun,) = [s for s in worker_spans if s.name == "process send_email"]
        assert rerun.parent_span_id == redrive.span_id and rerun.kind == 5  # parented by the enqueuing span
        assert rerun.links == ((producer_trace, first_capture.span_id, "redrive"),)  # the original: linked
        assert any(s.name == "dlq capture" for s in worker_spans)
        assert any(_is_db(s) for s in worker_spans)  # the capture's INSERT
        # No worker Redis span here: a try-1 send_email that fails permanently issues no Redis command
        # inside its run (arq's claim and finish of the job are outside the job's span); a job whose
        # code uses Redis (distribute_lead, export_report) or a try > 1 (the poison check) has them.
        assert all(s.trace_id != api_trace_id for s in first)  # the original failure is another trace
        assert retry_row["reason"] == "permanent" and retry_row["span_id"] is not None
        worker_lines = [orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
        job_lines = [line for line in worker_lines if line.get("job_id") == retry_job]
        assert any(line.get("event") == "dlq_captured" for line in job_lines)
        assert job_lines and all(line.get("trace_id") == api_trace_id for line in job_lines), job_lines
        assert not any("/health/" in s.name for s in receiver.spans)  # probes are not traced by default
        # arq's polls are root client spans: dropped (no one-span trace per Redis command)
        assert not any(_is_redis(s) and s.parent_span_id == "" for s in receiver.spans)

        # the console entry page links the trace through TRACE_URL_TEMPLATE (checked by its JSON here)
        detail = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/admin/queues/dlq/{retry_row['id']}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ).json()
        assert detail["trace_id"] == retry_row["trace_id"]
    finally:
        worker.stop()
        serve.stop()

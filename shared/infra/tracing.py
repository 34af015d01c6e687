"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` variables; off costs nothing.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or, unset, when
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; off when neither,
when it is ``none``, or with ``OTEL_SDK_DISABLED=true``. Off, nothing of OpenTelemetry is even
imported: no instrumentation is installed, ``job_span`` is a ``nullcontext``, log lines get no
ids, jobs carry no ``traceparent``. On: an SDK ``TracerProvider`` (sampler from
``OTEL_TRACES_SAMPLER``/``_ARG``, resource from ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``,
batching from ``OTEL_BSP_*``) exporting OTLP/HTTP protobuf, the asyncpg and redis
instrumentations, and Starlette's for the service (``instrument_app``).

Jobs (OpenTelemetry messaging conventions): ``enqueue`` writes the current context's W3C
``traceparent`` into the job (kwarg ``_traceparent``, beside the correlation id). The job's run is
a CONSUMER span whose *parent* is that enqueuing context on its first try -- a DLQ retry's job
too: its enqueuing span is the retry's (the HTTP request's ``dlq redrive`` span), so one API call
gives one trace across the service and the worker. The relation to the *original* failure is a
*Link* (``fmhl.link=redrive``): the DLQ row keeps the trace id and span id of the span that
captured it, and a retry passes them to the new job (kwarg ``_tracelink``). A retry of a job
(try > 1) is the root of a *new trace linked* to the enqueuing context (``fmhl.link=retry``), as
before: arq re-runs the same message, so parenting every try under one enqueue span would grow an
unbounded trace of a job that backs off for hours, and the backends join linked traces anyway.
DLQ capture and redrive are spans of their own.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_enabled = False
_tracer: Any = None
# default OTEL_PYTHON_STARLETTE_EXCLUDED_URLS (regular expressions searched in the request URL)
UNTRACED_URLS = "/health/live$,/health/ready$,/metrics$"


def tracing_requested(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def tracing_enabled() -> bool:
    return _enabled


def configure_tracing(default_service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Set up tracing for this process if the environment asks for it; True when on."""
    global _enabled, _tracer
    e = os.environ if env is None else env
    if _enabled or not tracing_requested(e):
        return _enabled
    from opentelemetry import trace
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attributes = {} if e.get("OTEL_SERVICE_NAME") else {"service.name": default_service_name}
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_no_root_client_spans())
    exporter: SpanExporter
    if e.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    RedisInstrumentor().instrument()
    _tracer = trace.get_tracer("fmhl-ops")
    _enabled = True
    return True


def _no_root_client_spans() -> Any:
    """``OTEL_TRACES_SAMPLER``'s sampler, except that a CLIENT span without a parent is dropped:
    arq's polls, heartbeats and pool pings (several Redis commands every 50 ms per worker) would
    otherwise each export a one-span trace. Client calls inside a request or a job are kept."""
    from opentelemetry.sdk.trace import sampling
    from opentelemetry.trace import SpanKind, get_current_span

    class NoRootClientSpans(sampling.Sampler):
        def __init__(self, delegate: sampling.Sampler) -> None:
            self.delegate = delegate

        def should_sample(self, parent_context: Any, *args: Any, **kwargs: Any) -> Any:
            kind = args[2] if len(args) > 2 else kwargs.get("kind")
            if kind == SpanKind.CLIENT and not get_current_span(parent_context).get_span_context().is_valid:
                return sampling.SamplingResult(sampling.Decision.DROP)
            return self.delegate.should_sample(parent_context, *args, **kwargs)

        def get_description(self) -> str:
            return f"NoRootClientSpans({self.delegate.get_description()})"

    return NoRootClientSpans(sampling._get_from_env_or_default())


def instrument_app(app: Any) -> None:
    """The service's Starlette app: a SERVER span per request (when tracing is on)."""
    if _enabled:
        # Probes and scrapes are not traced unless the operator says otherwise (the instrumentation
        # reads these at import): a span per kubelet probe is noise, and it cut /health/live to
        # 0.21x of the bare app in `make bench` with an exporter on.
        if not (
            os.environ.get("OTEL_PYTHON_STARLETTE_EXCLUDED_URLS")
            or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
        ):
            os.environ["OTEL_PYTHON_STARLETTE_EXCLUDED_URLS"] = UNTRACED_URLS
        from opentelemetry.instrumentation.starlette import StarletteInstrumentor

        StarletteInstrumentor.instrument_app(app)


def shutdown_tracing() -> None:
    """Flush and stop (tests, and processes that exit without the SDK's atexit hook)."""
    if _enabled:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) as 32/16 hex digits of the current recording span, else None."""
    if not _enabled:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def current_traceparent() -> str | None:
    """The current context as a W3C ``traceparent`` header value (None when off or no span)."""
    if not _enabled:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def job_span(
    *, queue: str, function: str, job_id: str, job_try: int, traceparent: str | None, link: str | None
) -> Iterator[None]:
    """The job's run: child of the enqueuing span (``traceparent``) on a first try, a new trace
    linked to it on a retry; ``link`` (a DLQ retry's original failure) is always a Link."""
    if not _enabled:
        yield
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    parent = propagator.extract({"traceparent": traceparent}) if traceparent else otel_context.Context()
    parent_span = trace.get_current_span(parent).get_span_context()
    links: list[Link] = []
    if job_try > 1 and parent_span.is_valid:
        links.append(Link(parent_span, {"fmhl.link": "retry"}))
        parent = otel_context.Context()  # a new trace, linked
    if link:
        original = trace.get_current_span(propagator.extract({"traceparent": link})).get_span_context()
        if original.is_valid:
            links.append(Link(original, {"fmhl.link": "redrive"}))
    attributes = {
        "messaging.system": "arq",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "fmhl.job.function": function,
        "fmhl.job.try": job_try,
    }
    with _tracer.start_as_current_span(
        f"process {function}", context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attributes
    ):
        yield


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """An async function as a span of its own when tracing is on (one flag check when off)."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not _enabled:
                return await fn(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate

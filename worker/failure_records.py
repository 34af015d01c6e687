"""Turning a failed job into a ``FailureRecord`` and handing it to ``shared.dlq.capture.capture``.

Two paths: ``record_from_exception`` (the failure decorator saw the exception) and
``record_from_silent_failure`` (arq's ``finish_failed_job``: expired, unknown function, max tries
passed while queued — no exception object, only arq's result record).

Any failure can be stored: whatever a job carried and however its exception misbehaves, the
record built here is one Postgres accepts (``shared.dlq.content``: bounded text, NUL and lone
surrogates escaped reversibly and flagged, an oversized or non-JSON payload omitted with its
reason), and building it costs time linear in what the job carried:

* the message is ``str(exc)``, else ``repr(exc)``, else a placeholder naming what raised — an
  exception whose ``__str__`` raises is still captured;
* the stack trace is formatted here, bounded: at most ``MAX_CHAIN`` exceptions of a
  ``__cause__``/``__context__`` chain, ``MAX_FRAMES`` frames each (first and last kept), each
  exception's message cut at ``TRACE_MESSAGE_LIMIT``, exception groups ``MAX_GROUP_WIDTH`` wide and
  ``MAX_GROUP_DEPTH`` deep; nothing renders a whole multi-megabyte ``repr`` twice;
* the fingerprint masks a bounded prefix of the message (``shared.dlq.fingerprint``).
"""

from __future__ import annotations

import traceback
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson

from shared.dlq.capture import FailureRecord
from shared.dlq.content import (
    ERROR_MESSAGE_LIMIT,
    JOB_ID_LIMIT,
    NAME_LIMIT,
    STACK_HEAD,
    STACK_TAIL,
    escape_text,
    map_strings,
    needs_escape,
    payload_size_error,
    safe_preview,
    stored_identifier,
    truncate_head,
    truncate_middle,
)
from shared.dlq.fingerprint import fingerprint, top_app_frame
from shared.jobs.queues import split_reserved_kwargs

MAX_CHAIN = 10
MAX_FRAMES = 100
FRAMES_HEAD = 20
MAX_FRAME_TEXT = 2000
TRACE_MESSAGE_LIMIT = 8192
MAX_GROUP_WIDTH = 15
MAX_GROUP_DEPTH = 5


# -- rendering an exception without trusting it -----------------------------------------------
def _type_name(exc: BaseException) -> str:
    name = getattr(type(exc), "__name__", None)
    return name if isinstance(name, str) and name else "<unnamed exception type>"


def _qualified_type(exc: BaseException) -> str:
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None)
    name = qualname if isinstance(qualname, str) and qualname else _type_name(exc)
    if not isinstance(module, str) or module in ("builtins", "__main__"):
        return name
    return f"{module}.{name}"


def safe_message(exc: BaseException) -> str:
    """``str(exc)``, else ``repr(exc)``, else a placeholder; never raises."""
    failures: list[str] = []
    for render in (str, repr):
        try:
            text = render(exc)
        except Exception as render_error:
            failures.append(f"{render.__name__}() raised {type(render_error).__name__}")
            continue
        if isinstance(text, str) and text:
            return str.__str__(text)  # a str subclass becomes a plain str
    detail = "; ".join(failures) or "str() and repr() are empty"
    return f"<unprintable {_type_name(exc)}: {detail}>"


def _frames(tb: TracebackType | None) -> list[str]:
    walked = list(traceback.walk_tb(tb))
    omitted = 0
    if len(walked) > MAX_FRAMES:
        omitted = len(walked) - MAX_FRAMES
        walked = walked[:FRAMES_HEAD] + walked[-(MAX_FRAMES - FRAMES_HEAD) :]
    try:
        lines = traceback.StackSummary.extract(iter(walked), lookup_lines=True).format()
    except Exception:  # a frame whose source cannot be read: names and line numbers only
        lines = [f'  File "{f.f_code.co_filename}", line {n}, in {f.f_code.co_name}\n' for f, n in walked]
    lines = [line if len(line) <= MAX_FRAME_TEXT else line[:MAX_FRAME_TEXT] + "…\n" for line in lines]
    if omitted:
        lines.insert(FRAMES_HEAD, f"  […{omitted} frames omitted…]\n")
    return lines


def _exception_block(exc: BaseException, out: list[str], indent: str = "", depth: int = 0) -> None:
    """Append one exception (traceback, type, message; sub-exceptions of a group) to ``out``."""
    if exc.__traceback__ is not None:
        out.append(f"{indent}Traceback (most recent call last):\n")
        out.extend(indent + line for line in _frames(exc.__traceback__))
    message = truncate_head(safe_message(exc), TRACE_MESSAGE_LIMIT, "message")
    out.append(f"{indent}{_qualified_type(exc)}: {message}\n")
    children = getattr(exc, "exceptions", None)
    if not isinstance(exc, BaseExceptionGroup) or not isinstance(children, tuple):
        return
    if depth >= MAX_GROUP_DEPTH:
        out.append(f"{indent}  [… {len(children)} sub-exceptions deeper than {MAX_GROUP_DEPTH} levels]\n")
        return
    for index, child in enumerate(children[:MAX_GROUP_WIDTH], start=1):
        out.append(f"{indent}+---------------- {index} ----------------\n")
        if isinstance(child, BaseException):
            _exception_block(child, out, indent + "  | ", depth + 1)
    if len(children) > MAX_GROUP_WIDTH:
        out.append(f"{indent}+---------------- … {len(children) - MAX_GROUP_WIDTH} more ----------------\n")


def format_stack_trace(exc: BaseException) -> str:
    """A bounded traceback of ``exc`` and its chain, oldest cause first (as Python prints it)."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "direct cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "context"
        else:
            current = None
    out: list[str] = []
    if current is not None and id(current) not in seen:
        out.append(f"[… older exceptions of the chain omitted (more than {MAX_CHAIN})]\n\n")
    for position in range(len(chain) - 1, -1, -1):
        _exception_block(chain[position][0], out)
        if position:
            if chain[position][1] == "direct cause":
                out.append("\nThe above exception was the direct cause of the following exception:\n\n")
            else:
                out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    return truncate_middle("".join(out), STACK_HEAD, STACK_TAIL, "stack trace")


# -- storable payload ------------------------------------------------------------------------
def _payload_needs_escape(args: list[Any], kwargs: dict[str, Any]) -> bool:
    try:
        encoded = orjson.dumps([args, kwargs])
    except TypeError as exc:  # lone surrogates; anything else is sorted out after escaping
        return "surrogates" in str(exc)
    return b"\\u0000" in encoded


def _build(
    *,
    queue: str,
    job_id: str,
    function: str,
    args: list[Any],
    kwargs: dict[str, Any],
    error_type: str,
    message: str,
    stack_trace: str,
    frame: str,
    attempts: int,
    reason: str,
    enqueued_at: datetime | None,
    correlation_id: str | None,
    retry_of: uuid.UUID | None,
) -> FailureRecord:
    identifiers = {"job_id": job_id, "function": function, "error_type": error_type}
    fields = {
        "error_message": truncate_head(message, ERROR_MESSAGE_LIMIT, "error_message"),
        "stack_trace": stack_trace,
        "correlation_id": correlation_id[:NAME_LIMIT] if correlation_id else None,
    }
    escaped = (
        any(needs_escape(v) for v in fields.values() if v)
        or any(needs_escape(v[:JOB_ID_LIMIT]) for v in identifiers.values())
        or _payload_needs_escape(args, kwargs)
    )
    fields |= {k: stored_identifier(v, escaped, job_id=k == "job_id") for k, v in identifiers.items()}
    payload_omitted: str | None = None
    try:
        if escaped:
            for name in ("error_message", "stack_trace", "correlation_id"):
                value = fields[name]
                fields[name] = escape_text(value) if value else value
            args, kwargs = map_strings(args, escape_text), map_strings(kwargs, escape_text)
        payload_omitted = payload_size_error(args, kwargs)
    except (ValueError, TypeError) as exc:
        payload_omitted = f"arguments are not storable as JSON ({exc})"
    if payload_omitted is not None:
        preview = safe_preview({"args": args, "kwargs": kwargs})
        payload_omitted = f"{payload_omitted}; preview: {escape_text(preview) if escaped else preview}"
        if needs_escape(payload_omitted):
            payload_omitted = payload_omitted.encode("utf-8", "backslashreplace").decode().replace("\x00", "")
        args, kwargs = [], {}
    return FailureRecord(
        queue=queue,
        job_id=str(fields["job_id"]),
        function=str(fields["function"]),
        args=args,
        kwargs=kwargs,
        error_type=str(fields["error_type"]),
        error_message=str(fields["error_message"]),
        stack_trace=str(fields["stack_trace"]),
        fingerprint=fingerprint(error_type, message, frame),
        attempts=attempts,
        reason=reason,
        failed_at=datetime.now(UTC),
        enqueued_at=enqueued_at,
        correlation_id=fields["correlation_id"],
        retry_of=retry_of,
        content_escaped=escaped,
        payload_omitted=payload_omitted,
    )


def record_from_exception(
    *,
    queue: str,
    job_id: str,
    function: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    exc: BaseException,
    attempts: int,
    reason: str,
    enqueued_at: datetime | None,
    correlation_id: str | None,
    retry_of: uuid.UUID | None,
) -> FailureRecord:
    return _build(
        queue=queue,
        job_id=job_id,
        function=function,
        args=list(args),
        kwargs=kwargs,
        error_type=_type_name(exc),
        message=safe_message(exc),
        stack_trace=format_stack_trace(exc),
        frame=top_app_frame(exc.__traceback__),
        attempts=attempts,
        reason=reason,
        enqueued_at=enqueued_at,
        correlation_id=correlation_id,
        retry_of=retry_of,
    )


SILENT_ERROR_TYPES = {
    "expired": ("JobExpired", "job definition expired in Redis before a worker ran it"),
    "function_not_found": ("FunctionNotFound", "no worker function named {function!r} on queue {queue!r}"),
    "max_tries_exceeded": ("MaxTriesExceeded", "try {attempts} exceeds max_tries {max_tries}"),
    "worker_lost": (
        "WorkerLost",
        "the worker running try {last_try} of {max_tries} stopped without finishing it (killed or crashed)",
    ),
    "permanent": ("JobNotRunnable", "arq could not run the job: {detail}"),
    "poison": ("PoisonJob", "quarantined instead of running try {attempts} of {max_tries}: {detail}"),
}


# reasons whose last counted try never finished: attempts = the tries that actually ran
UNFINISHED_LAST_TRY = ("worker_lost", "max_tries_exceeded", "poison")


def record_from_silent_failure(
    *,
    queue: str,
    job_id: str,
    result: dict[str, Any],
    reason: str,
    max_tries: int | None,
) -> FailureRecord:
    """Build the record from arq's result dict (``f``, ``a``, ``k``, ``t``, ``et``, ``r``)."""
    function = str(result.get("f") or "<unknown>")
    raw_args = result.get("a") or []
    raw_kwargs = result.get("k") or {}
    args = list(raw_args) if isinstance(raw_args, list | tuple) else [raw_args]
    kwargs, correlation_id, retry_of = split_reserved_kwargs(
        dict(raw_kwargs) if isinstance(raw_kwargs, dict) else {"_": raw_kwargs}
    )
    attempts = int(result.get("t") or 0)
    detail = result.get("r")
    detail_text = detail.get("error_message", "") if isinstance(detail, dict) else str(detail or "")
    error_type, template = SILENT_ERROR_TYPES[reason]
    if reason == "permanent" and isinstance(detail, dict) and detail.get("error_type"):
        error_type = str(detail["error_type"])
    message = template.format(
        function=function[:NAME_LIMIT],
        queue=queue,
        attempts=attempts,
        max_tries=max_tries,
        last_try=max(attempts - 1, 0),
        detail=str(detail_text)[:ERROR_MESSAGE_LIMIT],
    )
    enqueue_ms = result.get("et")
    return _build(
        queue=queue,
        job_id=job_id,
        function=function,
        args=args,
        kwargs=kwargs,
        error_type=error_type,
        message=message,
        stack_trace="",
        frame=f"arq:{reason}",
        attempts=max(attempts - 1, 0) if reason in UNFINISHED_LAST_TRY else attempts,
        reason=reason,
        enqueued_at=datetime.fromtimestamp(enqueue_ms / 1000, tz=UTC) if enqueue_ms else None,
        correlation_id=correlation_id,
        retry_of=retry_of,
    )

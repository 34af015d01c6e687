"""JSON logging: loguru configured once, every line one orjson object.

Fields: ``time`` (UTC ISO 8601), ``level``, ``event`` (stable snake_case name), ``message``,
``module``, ``function``, ``correlation_id``/``request_id`` when bound, any extra fields, and for
errors ``error_type``, ``error_message``, ``stack``. stdlib logging (uvicorn, asyncpg, arq) is
routed into loguru, so their lines are JSON too (the HTTP access log is the service middleware's
``http_access``; arq's per-job lines show only at DEBUG). Values under secret-looking keys are
redacted before serialisation.

Log with ``log_event(logger_level, "event_name", message, **fields)`` or
``logger.bind(event="...").info(...)``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

from shared.infra.correlation import current_correlation_id
from shared.infra.timefmt import iso_utc
from shared.infra.tracing import current_ids

if TYPE_CHECKING:
    from loguru import Message, Record

SECRET_KEYS = frozenset(
    {"password", "token", "totp_code", "secret", "authorization", "mfa_secret", "otpauth_uri", "cookie"}
)
# A key containing any of these (any case) is a secret too: ``new_password``, ``access_token``,
# ``totp_secret``, ``set-cookie``, ``x-api-key``. Nested dicts are redacted the same way.
_SECRET_KEY_PARTS = ("password", "passwd", "token", "secret", "authorization", "cookie", "otp", "api_key")
_REDACT_DEPTH = 4
MAX_MESSAGE_CHARS = 16 * 1024
MAX_STACK_CHARS = 64 * 1024


def is_secret_key(key: str) -> bool:
    lowered = key.lower().replace("-", "_")
    return lowered in SECRET_KEYS or any(part in lowered for part in _SECRET_KEY_PARTS)


def _redact(fields: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    redacted: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(key, str) and is_secret_key(key):
            redacted[key] = "[redacted]"
        elif isinstance(value, dict) and depth < _REDACT_DEPTH:
            redacted[key] = _redact(value, depth + 1)
        else:
            redacted[key] = value
    return redacted


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…[truncated {len(text) - limit} characters]"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception as exc:
        return f"<unprintable {type(value).__name__}: str() raised {type(exc).__name__}>"


def record_to_dict(record: Record) -> dict[str, Any]:
    extra = dict(record["extra"])
    event = extra.pop("event", None) or _default_event(record)
    payload: dict[str, Any] = {
        "time": iso_utc(record["time"], "milliseconds"),
        "level": record["level"].name,
        "event": event,
        "message": _bounded(record["message"], MAX_MESSAGE_CHARS),
        "module": record["name"],
        "function": record["function"],
    }
    correlation_id = extra.pop("correlation_id", None) or current_correlation_id()
    if correlation_id:
        payload["correlation_id"] = correlation_id
        payload["request_id"] = extra.pop("request_id", None) or correlation_id
    ids = current_ids()  # a line written inside a span carries its ids (None, at once, when tracing is off)
    if ids is not None:
        payload["trace_id"], payload["span_id"] = ids
    payload.update(_redact(extra))
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        payload["error_type"] = exc.type.__name__
        payload["error_message"] = _bounded(_safe_str(exc.value), MAX_MESSAGE_CHARS)
        stack = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback, limit=50))
        payload["stack"] = _bounded(stack, MAX_STACK_CHARS)
    return payload


def _default_event(record: Record) -> str:
    name = record["name"] or "log"
    return name.replace(".", "_")


def _encodable(value: Any, depth: int = 0) -> Any:
    """``value`` with lone surrogates (which orjson refuses) written as ``\\udXXX``."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict) and depth < 8:
        return {_encodable(k, depth + 1): _encodable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple) and depth < 8:
        return [_encodable(v, depth + 1) for v in value]
    return value if depth < 8 else _safe_str(value)[:MAX_MESSAGE_CHARS]


def _json_sink(message: Message) -> None:
    payload = record_to_dict(message.record)
    try:
        line = orjson.dumps(payload, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # a lone surrogate somewhere (an exception message, a field): escape, keep the line
        line = orjson.dumps(_encodable(payload), default=str, option=orjson.OPT_APPEND_NEWLINE)
    sys.stdout.buffer.write(line)
    sys.stdout.flush()


_STDLIB_EVENTS = {"uvicorn.access": "http_access", "uvicorn.error": "uvicorn", "arq.worker": "arq_worker"}


def _render_safely(record: logging.LogRecord) -> str:
    """``msg % args`` with every argument that cannot be rendered replaced by a placeholder."""
    args = record.args if isinstance(record.args, tuple) else (record.args,)
    safe = tuple(a if isinstance(a, int | float) else _safe_str(a)[:MAX_MESSAGE_CHARS] for a in args)
    try:
        return _safe_str(record.msg) % safe
    except Exception as exc:
        return f"{_safe_str(record.msg)} [arguments not rendered: {type(exc).__name__}]"


class InterceptHandler(logging.Handler):
    """Route stdlib logging records into loguru, keeping the caller's level and module."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        event = _STDLIB_EVENTS.get(record.name, record.name.replace(".", "_"))
        try:
            message = record.getMessage()
        except Exception:  # an argument whose str() raises must not break the caller
            message = _render_safely(record)
        exc_info = record.exc_info
        if exc_info and record.name.startswith("arq"):
            # arq logs every failed job with its traceback; the failure decorator and the DLQ row
            # already carry it, and rendering it again cost ~40 % of a failure storm's CPU.
            exc_info = None
        logger.opt(exception=exc_info, depth=6).bind(event=event, logger=record.name).log(
            level, _bounded(message, MAX_MESSAGE_CHARS)
        )


# arq's line for a job that raised ('%6.2fs ! %s failed, %s: %s', with the traceback). Every
# job function runs under worker.failure's decorator, which logs the outcome itself (retry
# scheduled, or dlq_captured with the fingerprint and DLQ id), so this line only repeated it
# at ~4 % of a failure storm's CPU.
_ARQ_JOB_FAILED_FORMAT = "%6.2fs ! %s failed, %s: %s"


class _DropArqJobFailedLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _ARQ_JOB_FAILED_FORMAT


_DROP_ARQ_JOB_FAILED = _DropArqJobFailedLines()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure loguru and stdlib logging. Safe to call more than once (last call wins)."""
    logger.remove()
    if fmt == "console":
        logger.add(
            sys.stderr,
            level=level,
            format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <8}</level> {name}: {message} {extra}",
            diagnose=False,  # never render local variables (they may hold secrets)
            backtrace=False,
        )
    else:
        logger.add(_json_sink, level=level, format="{message}", catch=True, diagnose=False, backtrace=False)
    logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncpg", "arq", "arq.worker"):
        std = logging.getLogger(name)
        std.handlers = [InterceptHandler()]
        std.propagate = False
        std.setLevel(logging.getLevelName(level) if level != "TRACE" else logging.DEBUG)
    # arq's two INFO lines per job ("→ started", "← done") cost ~16 % of a busy worker's CPU and
    # say what fmhl_queue_* metrics already count; they show at LOG_LEVEL=DEBUG.
    arq_worker = logging.getLogger("arq.worker")
    if _DROP_ARQ_JOB_FAILED not in arq_worker.filters:
        arq_worker.addFilter(_DROP_ARQ_JOB_FAILED)
    if logging.getLevelName(level) == logging.INFO or level == "SUCCESS":
        for name in ("arq", "arq.worker"):
            logging.getLogger(name).setLevel(logging.WARNING)


def log_event(level: str, event: str, message: str = "", **fields: Any) -> None:
    """Log one structured event; ``message`` defaults to the event name."""
    logger.opt(depth=1).bind(event=event, **fields).log(level, message or event)


def now_utc() -> datetime:
    return datetime.now(UTC)

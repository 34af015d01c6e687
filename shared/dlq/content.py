"""What a DLQ row can hold: the reversible escaping scheme and the bounds on stored text.

Postgres refuses two things a Python string (or a job's JSON) can carry: NUL (``\\x00``) in
``text`` and ``jsonb``, and lone surrogates (``\\ud800``; UTF-8 cannot encode them, and neither can
orjson). A record carrying either is stored *escaped* and marked ``content_escaped``:

* the scheme, applied to every text field of the record (job id, function, error type, message,
  stack trace, correlation id) and to every string key and value inside ``args``/``kwargs``:
  ``\\`` → ``\\\\``, NUL → ``\\u0000``, a lone surrogate U+D800 to U+DFFF → ``\\udXXX`` (four
  lower-case hex digits); nothing else changes;
* ``unescape_text`` reverses it exactly (``\\\\`` → ``\\``, ``\\uXXXX`` → that code point), so a retry
  replays the original arguments;
* records with neither character are stored verbatim and ``content_escaped`` is false, so the
  flag tells a reader which form they see.

Bounds (characters of the Python string, applied before escaping; the cut is marked in the text
itself, ``…[truncated: …]``):

* ``error_message``: the first ``ERROR_MESSAGE_LIMIT`` (64 Ki) characters;
* ``stack_trace``: the first ``STACK_HEAD`` (32 Ki) and the last ``STACK_TAIL`` (224 Ki)
  characters, so the innermost frames and the failing exception (printed last) survive;
* ``error_type`` 256, ``function`` 256, ``correlation_id`` 256 characters; a ``job_id`` over 512
  characters keeps its first 400 and a SHA-256 of the whole, so it stays unique; and each of these
  at most 1000 bytes of UTF-8 once escaped (they are indexed; ``stored_identifier``);
* ``args`` + ``kwargs``: stored whole up to ``PAYLOAD_LIMIT_BYTES`` (2 MiB of JSON). A larger
  payload, or one orjson cannot write (integers beyond 64 bits, nesting deeper than 254 levels,
  values that are not JSON), is not stored: ``args``/``kwargs`` are empty and ``payload_omitted``
  says why, with a bounded preview; such an entry cannot be retried (409 ``not_retryable``).

Everything here is linear in its input: ``str.replace``/``encode`` passes, one regex with fixed
alternatives for unescaping, and an iterative walk (no recursion) over payload containers.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
from collections.abc import Callable
from typing import Any

import orjson

ERROR_MESSAGE_LIMIT = 64 * 1024
STACK_HEAD = 32 * 1024
STACK_TAIL = 224 * 1024
STACK_TRACE_LIMIT = STACK_HEAD + STACK_TAIL
NAME_LIMIT = 256
JOB_ID_LIMIT = 512
IDENTIFIER_MAX_BYTES = 1000
PAYLOAD_LIMIT_BYTES = 2 * 1024 * 1024
PREVIEW_LIMIT = 4096
MAX_PAYLOAD_NODES = 5_000_000

_UNESCAPE = re.compile(r"\\(\\|u[0-9a-f]{4})")


def needs_escape(text: str) -> bool:
    """True when Postgres cannot store ``text`` as it is (NUL or a lone surrogate)."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escape_text(text: str) -> str:
    """The storable form of ``text`` under the scheme above (always applied, even if not needed)."""
    escaped = text.replace("\\", "\\\\").replace("\x00", "\\u0000")
    if escaped.isascii():
        return escaped
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def _unescape_match(match: re.Match[str]) -> str:
    token = match.group(1)
    return "\\" if token == "\\" else chr(int(token[1:], 16))


def unescape_text(text: str) -> str:
    """The original of an ``escape_text`` result."""
    if "\\" not in text:
        return text
    return _UNESCAPE.sub(_unescape_match, text)


def map_strings(value: Any, transform: Callable[[str], str]) -> Any:
    """A copy of a JSON-like value with ``transform`` applied to every string (keys included).

    Iterative, so deep nesting cannot exhaust the stack; raises ``ValueError`` past
    ``MAX_PAYLOAD_NODES`` values (a cycle or an absurd payload).
    """
    holder: list[Any] = [value]
    pending: list[tuple[Any, Any]] = [(holder, 0)]
    nodes = 0
    while pending:
        container, key = pending.pop()
        nodes += 1
        if nodes > MAX_PAYLOAD_NODES:
            raise ValueError(f"payload has more than {MAX_PAYLOAD_NODES} values (or a cycle)")
        item = container[key]
        if isinstance(item, str):
            container[key] = transform(item)
        elif isinstance(item, dict):
            copied: dict[Any, Any] = {}
            for name, child in item.items():
                new_name = transform(name) if isinstance(name, str) else name
                copied[new_name] = child
                pending.append((copied, new_name))
            container[key] = copied
        elif isinstance(item, list | tuple):
            as_list = list(item)
            container[key] = as_list
            pending.extend((as_list, index) for index in range(len(as_list)))
    return holder[0]


def truncate_head(text: str, limit: int, what: str) -> str:
    """``text`` cut to its first ``limit`` characters, the cut marked at the end."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n…[truncated: {what} kept the first {limit} of {len(text)} characters]"


def truncate_middle(text: str, head: int, tail: int, what: str) -> str:
    """``text`` cut to its first ``head`` and last ``tail`` characters, the cut marked between."""
    if len(text) <= head + tail:
        return text
    omitted = len(text) - head - tail
    return f"{text[:head]}\n…[truncated: {what} omits {omitted} characters here]…\n{text[-tail:]}"


def bounded_job_id(job_id: str, keep: int = 400) -> str:
    if len(job_id) <= JOB_ID_LIMIT and keep >= 400:
        return job_id
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{job_id[:keep]}…sha256:{digest}"


def stored_identifier(raw: str, escaped: bool, *, job_id: bool = False) -> str:
    """The stored form of a short indexed field (job id; error type and function key the failure
    groups), at most ``IDENTIFIER_MAX_BYTES`` of UTF-8 however it is escaped: a btree entry must
    stay under Postgres's ~2.7 KB per row. A job id cut this way keeps a SHA-256 of the whole."""
    keep = JOB_ID_LIMIT if job_id else NAME_LIMIT
    while True:
        bounded = bounded_job_id(raw, min(keep, 400)) if job_id else raw[:keep]
        stored = escape_text(bounded) if escaped else bounded
        if len(stored.encode("utf-8", "surrogatepass")) <= IDENTIFIER_MAX_BYTES or keep <= 8:
            return stored
        keep //= 2


def safe_preview(value: Any) -> str:
    """A bounded ``repr`` of anything (never raises, never renders more than a few KiB)."""
    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxstring, shortener.maxother = 6, 200, 200
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = 20
    try:
        preview = shortener.repr(value)
    except Exception as exc:
        preview = f"<unrepresentable {type(value).__name__}: repr raised {type(exc).__name__}>"
    return preview[:PREVIEW_LIMIT]


def payload_size_error(args: Any, kwargs: Any) -> str | None:
    """Why ``args``/``kwargs`` (already storable strings) cannot be stored, or None."""
    try:
        size = len(orjson.dumps(args)) + len(orjson.dumps(kwargs))
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        return f"arguments are not storable as JSON ({exc})"
    if size > PAYLOAD_LIMIT_BYTES:
        return f"arguments are {size} bytes of JSON, over the {PAYLOAD_LIMIT_BYTES} byte limit"
    return None

"""No token, password or TOTP secret in any log line written during the whole test session.

An autouse session fixture (imported by ``tests/conftest.py``):

* collects the secrets tests create: every session token the product issues (``create_session``),
  every password it hashes and every TOTP secret it enrols (``create_user``, ``reset_mfa``), plus
  what the factories make directly (``remember`` in ``tests/factories.py``);
* captures every log line: a loguru sink rendering records exactly as the JSON sink does
  (``record_to_dict``, redaction included) that survives ``configure_logging``'s
  ``logger.remove()``; a stdlib handler for libraries logging before loguru is configured; and the
  JSON log lines of every real process started through ``tests.procs.Proc``;
* at the end of the session, fails (an error in the last test's teardown) if any secret occurs
  in any captured line, naming the line's event — never the secret.

Only secrets of 8+ characters are tracked (shorter ones would match by accident). Secrets made of
``[A-Za-z0-9_-]`` match as whole runs of those characters (a token in a log line is delimited by
quotes, spaces, ``=`` or ``&``), the rest as substrings.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from loguru import logger

import shared.auth.passwords as passwords_module
import shared.auth.sessions as sessions_module
import shared.auth.users as users_module
from shared.infra.logs import record_to_dict
from tests import procs

MIN_SECRET_LENGTH = 8
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_-]+")
SECRETS: set[str] = set()


def remember(*values: str | None) -> None:
    for value in values:
        if value and len(value) >= MIN_SECRET_LENGTH:
            SECRETS.add(value)


class _Capture:
    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # for the whole session
        self.lines = 0
        self.procs: list[procs.Proc] = []

    def write(self, line: bytes) -> None:
        self.file.write(line.rstrip(b"\n") + b"\n")
        self.lines += 1

    def loguru_sink(self, message: Any) -> None:
        try:
            line = orjson.dumps(record_to_dict(message.record), default=str)
        except TypeError:
            line = repr(record_to_dict(message.record)).encode("utf-8", "backslashreplace")
        self.write(line)

    def scan(self) -> tuple[int, list[str]]:
        """(lines scanned, events of the lines holding a secret)."""
        self.file.flush()
        self.file.seek(0)
        texts = [raw.decode("utf-8", "replace") for raw in self.file]
        for proc in self.procs:
            with contextlib.suppress(Exception):
                texts += [line for line in proc.output().splitlines() if _is_log_line(line)]
        # Secrets made of token characters (session tokens, TOTP secrets, generated passwords) are
        # looked up as whole runs of such characters, one set lookup per run; the few others by
        # substring. Linear in the log volume, whatever the number of secrets.
        word_like = {secret for secret in SECRETS if _TOKEN_RUN.fullmatch(secret)}
        others = SECRETS - word_like
        leaks = []
        for text in texts:
            if any(run in word_like for run in _TOKEN_RUN.findall(text)) or any(o in text for o in others):
                leaks.append(_event_of(text))
        return len(texts), leaks


def _is_log_line(line: str) -> bool:
    return line.startswith("{") and '"level"' in line and '"event"' in line


def _event_of(text: str) -> str:
    with contextlib.suppress(Exception):
        data = orjson.loads(text)
        if isinstance(data, dict):
            return f"{data.get('event')} ({data.get('module')})"
    return text[:40].replace("\n", " ") + "…"


class _StdlibHandler(logging.Handler):
    def __init__(self, capture: _Capture) -> None:
        super().__init__(level=logging.DEBUG)
        self.capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.capture.write(self.format(record).encode("utf-8", "backslashreplace"))


def _wrap(module: Any, name: str, register: Callable[[Any, tuple[Any, ...]], None]) -> Callable[[], None]:
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        register(result, args)
        return result

    setattr(module, name, wrapper)
    return lambda: setattr(module, name, original)


@pytest.fixture(scope="session", autouse=True)
def secret_scan() -> Iterator[None]:
    capture = _Capture()
    sink_id = logger.add(capture.loguru_sink, level="TRACE", format="{message}", catch=True)
    original_remove = logger.remove

    def remove_but_keep_the_scan(handler_id: int | None = None) -> None:
        if handler_id is not None:
            original_remove(handler_id)
            return
        for other in list(logger._core.handlers):  # type: ignore[attr-defined]
            if other != sink_id:
                original_remove(other)

    logger.remove = remove_but_keep_the_scan  # type: ignore[method-assign]
    handler = _StdlibHandler(capture)
    logging.getLogger().addHandler(handler)
    original_start = procs.Proc.start

    def start_and_track(self: procs.Proc) -> procs.Proc:
        capture.procs.append(self)
        return original_start(self)

    procs.Proc.start = start_and_track  # type: ignore[method-assign]
    restores = [
        _wrap(sessions_module, "new_token", lambda token, _: remember(token)),
        _wrap(passwords_module, "hash_password", lambda _, args: remember(args[0])),
        _wrap(users_module, "hash_password", lambda _, args: remember(args[0])),
        _wrap(users_module, "new_secret", lambda secret, _: remember(secret)),
    ]
    try:
        yield
    finally:
        for restore in restores:
            restore()
        procs.Proc.start = original_start  # type: ignore[method-assign]
        logging.getLogger().removeHandler(handler)
        logger.remove = original_remove  # type: ignore[method-assign]
        with contextlib.suppress(ValueError):
            logger.remove(sink_id)
    lines, leaks = capture.scan()
    capture.file.close()
    print(
        f"\nsecret scan: {lines} log lines, {len(SECRETS)} tokens/passwords/TOTP secrets, {len(leaks)} leaks"
    )
    assert not leaks, f"secrets found in log lines: {sorted(set(leaks))}"

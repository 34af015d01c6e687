"""Local SMTP servers (aiosmtpd) for tests that send real mail: a handler served on a free port,
a handler that records every delivery attempt, and a worker environment pointed at the server."""

from __future__ import annotations

import asyncio
import contextlib
import email
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from aiosmtpd.controller import Controller

from cli.embedded import free_port
from tests.procs import base_env


@contextlib.contextmanager
def smtp_server(handler: Any) -> Iterator[int]:
    """Serve ``handler`` on 127.0.0.1 for the block; yields the port."""
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def smtp_env(database_url: str, redis_url: str, smtp_port: int, **extra: str) -> dict[str, str]:
    """A process environment whose email backend is the SMTP server on ``smtp_port``."""
    return base_env(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        EMAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        **extra,
    )


class RecordingSmtp:
    """Accepts mail after ``delay`` s (or answers 451 while ``down``); records every attempt."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.down = False
        self.attempts: list[tuple[str, float, str]] = []  # (idempotency key, time, reply)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        key = str(email.message_from_bytes(envelope.content).get("X-FMHL-Idempotency-Key", ""))
        if self.down:
            self._note(key, "451")
            return "451 4.3.0 Try again later"
        await asyncio.sleep(self.delay)
        self._note(key, "250")
        return "250 OK"

    def _note(self, key: str, reply: str) -> None:
        with self._lock:
            self.attempts.append((key, time.time(), reply))

    def delivered(self) -> Counter[str]:
        with self._lock:
            return Counter(key for key, _, reply in self.attempts if reply == "250")

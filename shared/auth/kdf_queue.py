"""The password-hashing queue of one process: bounded, and fair between client addresses.

A scrypt derivation costs ~0.3-0.6 s of CPU and 128 MiB, and at most ``running`` run at once.
Unbounded, a burst of 100 wrong logins from one address queued 100 derivations and a login from
another address waited 19-48 s behind them (issue 16). So every login is *admitted* first, before
any database work or hashing, and refused at once (429 with ``Retry-After``) when:

* its client address already has ``per_client`` attempts admitted (queued or hashing):
  ``rate_limited`` — a burst from one address holds at most that many places;
* ``capacity`` attempts are admitted in all (``running`` hashing, the rest waiting): ``busy`` —
  so an admitted attempt waits at most about ``capacity / running`` derivations.

With the defaults (2 running, 8 admitted, 1 per address) a burst from one address keeps one
hashing slot busy and another address's login takes the other at once: it costs one derivation,
well under 2 s. Two people behind one NAT signing in at the same instant: the second is told to
retry in a second. Several replicas each have their own queue: the per-address *failure* limit
(``shared.auth.login``) is the cross-replica one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

from shared.auth.passwords import KDF_CONCURRENCY

T = TypeVar("T")

DEFAULT_CAPACITY = 8
DEFAULT_PER_CLIENT = 1
RETRY_AFTER_SECONDS = 1


class HashingQueueFull(Exception):
    """Refused at admission: ``code`` is ``rate_limited`` (this address) or ``busy`` (everyone)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_seconds = RETRY_AFTER_SECONDS


class KdfQueue:
    def __init__(
        self,
        *,
        running: int = KDF_CONCURRENCY,
        capacity: int = DEFAULT_CAPACITY,
        per_client: int = DEFAULT_PER_CLIENT,
    ) -> None:
        if not 1 <= running <= capacity or per_client < 1:
            raise ValueError("need 1 <= running <= capacity and per_client >= 1")
        self.capacity = capacity
        self.per_client = per_client
        self._slots = asyncio.Semaphore(running)
        self._by_client: Counter[str] = Counter()

    @property
    def admitted(self) -> int:
        return self._by_client.total()

    def admit(self, client: str | None) -> contextlib.AbstractContextManager[None]:
        """A place for one login attempt of ``client`` (None: one shared "unknown" address), taken
        now (or ``HashingQueueFull``) and given back when the returned context exits."""
        key = client or "unknown"
        if self._by_client[key] >= self.per_client:
            raise HashingQueueFull(
                "rate_limited", "another login from this address is in progress; retry in a moment"
            )
        if self.admitted >= self.capacity:
            raise HashingQueueFull("busy", "too many logins in progress; retry in a moment")
        self._by_client[key] += 1
        return self._held(key)

    @contextlib.contextmanager
    def _held(self, key: str) -> Iterator[None]:
        try:
            yield
        finally:
            self._by_client[key] -= 1
            if self._by_client[key] <= 0:
                del self._by_client[key]

    async def run(self, derive: Callable[..., T], *args: object) -> T:
        """Run one CPU-bound derivation in a thread once a hashing slot is free."""
        async with self._slots:
            return await asyncio.to_thread(derive, *args)

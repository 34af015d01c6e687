"""A queue's pause state as the workers and the queue stats read it (Redis only).

One key per queue, ``fmhl:queue:paused:{queue}`` (``shared.infra.redis``), holding who paused
it, why and since when; absent while the queue runs. Changing it is an audited incident control
(``shared.controls.pause``); here only reading it: ``read_pauses`` for the stats (one ``MGET``)
and ``PauseGate``, a worker's cached view.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared.infra.logs import log_event
from shared.infra.redis import RedisClient, queue_paused_key

# A pause takes effect within this interval plus one poll (the worker's poll delay).
PAUSE_REFRESH_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class PauseState:
    by: str
    reason: str
    since: datetime

    def as_json(self) -> dict[str, str]:
        return {"by": self.by, "reason": self.reason, "since": self.since.isoformat()}

    def encode(self) -> bytes:
        return orjson.dumps(self.as_json())

    @classmethod
    def decode(cls, raw: bytes | str) -> PauseState:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            by=str(data["by"]), reason=str(data["reason"]), since=datetime.fromisoformat(data["since"])
        )


async def read_pause(redis: RedisClient, queue: str) -> PauseState | None:
    raw = await redis.get(queue_paused_key(queue))
    return PauseState.decode(raw) if raw else None


async def read_pauses(redis: RedisClient, queues: Sequence[str]) -> dict[str, PauseState | None]:
    """Every queue's state in one ``MGET``."""
    raws = await redis.mget([queue_paused_key(queue) for queue in queues])
    return {queue: PauseState.decode(raw) if raw else None for queue, raw in zip(queues, raws, strict=True)}


class PauseGate:
    """A worker's cached view of its queue's pause key: one ``GET`` per refresh interval, and
    only when the worker has jobs to start (an idle worker adds no Redis command)."""

    def __init__(self, queue: str, refresh_seconds: float = PAUSE_REFRESH_SECONDS) -> None:
        self.queue = queue
        self.refresh_seconds = refresh_seconds
        self.paused = False
        self._checked_at = float("-inf")

    async def is_paused(self, redis: RedisClient) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= self.refresh_seconds:
            paused = bool(await redis.exists(queue_paused_key(self.queue)))
            self._checked_at = time.monotonic()
            if paused != self.paused:
                log_event(
                    "INFO", "worker_queue_paused" if paused else "worker_queue_resumed", queue=self.queue
                )
            self.paused = paused
        return self.paused

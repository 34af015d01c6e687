"""Per-function retry policy: tries, timeout, backoff. The numbers an operator tunes.

Defaults (written down here and in the README): 5 tries, 30 s timeout, exponential backoff from
1 s doubling to at most 5 min, with ±50 % jitter (``jitter_ratio``) so a burst of failures
does not retry in step.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_TRIES = 5
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_BACKOFF_BASE_SECONDS = 1.0
DEFAULT_BACKOFF_MAX_SECONDS = 300.0
DEFAULT_JITTER_RATIO = 0.5
# arq's own timeout is a backstop a little above ours: ours fires first and becomes a Retry.
ARQ_TIMEOUT_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_tries: int = DEFAULT_MAX_TRIES
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    backoff_base_seconds: float = DEFAULT_BACKOFF_BASE_SECONDS
    backoff_max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS
    jitter_ratio: float = DEFAULT_JITTER_RATIO

    def backoff_seconds(self, job_try: int, rand: random.Random | None = None) -> float:
        """Delay before try ``job_try + 1``: base * 2^(try-1), capped, times 1 ± jitter_ratio."""
        raw = min(self.backoff_max_seconds, self.backoff_base_seconds * (2 ** max(0, job_try - 1)))
        jitter = 1.0 + self.jitter_ratio * (2 * (rand or random).random() - 1)
        return float(min(self.backoff_max_seconds, raw * jitter))

    def with_overrides(self, overrides: Mapping[str, Any]) -> RetryPolicy:
        """Operator overrides from ``JOB_POLICIES`` (unknown keys are rejected at start-up)."""
        return dataclasses.replace(self, **dict(overrides))

    @property
    def arq_timeout_seconds(self) -> float:
        return self.timeout_seconds + ARQ_TIMEOUT_GRACE_SECONDS

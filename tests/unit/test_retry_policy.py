from __future__ import annotations

import random

import asyncpg
import pytest

from shared.infra.errors import Busy, DependencyUnavailable, Invalid, NotFound
from shared.jobs.policy import RetryPolicy
from worker.failure import is_transient


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError("x"),
        TimeoutError(),
        Busy("providers locked"),
        DependencyUnavailable("postgres", "down"),
        asyncpg.exceptions.SerializationError("could not serialize"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock"),
        # a statement cache behind a transaction-mode pooler: the connection, not the job
        asyncpg.exceptions.InvalidSQLStatementNameError(
            'prepared statement "__asyncpg_stmt_1__" does not exist'
        ),
        asyncpg.exceptions.DuplicatePreparedStatementError('prepared statement "__asyncpg_stmt_1__" exists'),
        asyncpg.exceptions.InvalidCachedStatementError("cached statement plan is invalid"),
        # Postgres restarting under a query (the chaos test's restart)
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError(
            "terminating connection because of crash of another server process"
        ),
    ],
)
def test_transient_errors_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [ValueError("x"), KeyError("k"), Invalid("bad"), NotFound("gone")])
def test_other_errors_are_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    policy = RetryPolicy(backoff_base_seconds=1.0, backoff_max_seconds=10.0, jitter_ratio=0.5)
    rng = random.Random(7)
    for job_try, expected in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]:
        delays = [policy.backoff_seconds(job_try, rng) for _ in range(200)]
        assert expected * 0.5 <= min(delays) and max(delays) < expected * 1.5
        assert max(delays) - min(delays) > expected * 0.5  # jitter actually spreads retries
    assert max(policy.backoff_seconds(30, rng) for _ in range(50)) <= 10.0


def test_operator_overrides_replace_only_the_given_fields() -> None:
    policy = RetryPolicy(max_tries=5, timeout_seconds=30).with_overrides({"max_tries": 8})
    assert (policy.max_tries, policy.timeout_seconds) == (8, 30)
    assert policy.arq_timeout_seconds > policy.timeout_seconds

"""Which capture errors park a record as refused, and which mean Postgres was away."""

from __future__ import annotations

import asyncpg
import pytest

from shared.dlq.rejects import is_refusal
from shared.infra.errors import DependencyUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        DependencyUnavailable("postgres", "down"),
        asyncpg.exceptions.CannotConnectNowError("starting up"),
        asyncpg.InternalClientError("connection left mid-operation by a restart"),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed"),
        # prepared statements of the connection (a statement cache behind PgBouncer), not the record
        asyncpg.exceptions.InvalidSQLStatementNameError(
            'prepared statement "__asyncpg_stmt_1__" does not exist'
        ),
        asyncpg.exceptions.DuplicatePreparedStatementError('prepared statement "__asyncpg_stmt_1__" exists'),
        asyncpg.exceptions.InvalidCachedStatementError("cached statement plan is invalid"),
    ],
)
def test_an_unreachable_database_is_not_a_refusal(exc: BaseException) -> None:
    assert is_refusal(exc) is False


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.CheckViolationError("reason"),
        asyncpg.exceptions.UntranslatableCharacterError("\\u0000"),
        # same SQLSTATE classes as the statement errors above, but about the record itself
        asyncpg.exceptions.UndefinedColumnError('column "trace_id" does not exist'),
        asyncpg.exceptions.FeatureNotSupportedError("not supported"),
    ],
)
def test_a_record_postgres_refuses_is_a_refusal(exc: BaseException) -> None:
    assert is_refusal(exc) is True

"""Running one shared use case from a command: short-lived clients (a pool of one connection, a
Redis client) opened for the call and closed after it, one correlation id for its audit rows and
logs, and expected failures (domain errors, Postgres errors) turned into one line on stderr."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from cli.errors import CliError
from shared.infra.config import Settings
from shared.infra.correlation import bind_correlation_id, reset_correlation_id
from shared.infra.db import create_pool
from shared.infra.errors import DomainError
from shared.infra.redis import create_redis

T = TypeVar("T")


def run_use_case(
    settings: Settings,
    use_case: Callable[[Any, Any], Awaitable[T]],
    *,
    application_name: str,
    needs_db: bool = True,
    needs_redis: bool = True,
) -> T:
    """Run ``use_case(conn, redis)``; a client not needed is ``None`` and never opened."""

    async def with_db(redis: Any) -> T:
        if not needs_db:
            return await use_case(None, redis)
        pool = await create_pool(settings, application_name=application_name)
        try:
            async with pool.acquire() as conn:
                return await use_case(conn, redis)
        finally:
            await pool.close()

    async def main() -> T:
        token = bind_correlation_id(f"cli-{uuid.uuid4()}")
        try:
            if not needs_redis:
                return await with_db(None)
            redis = create_redis(settings.require_redis_url())
            try:
                return await with_db(redis)
            finally:
                await redis.aclose()
        finally:
            reset_correlation_id(token)

    try:
        return asyncio.run(main())
    except DomainError as exc:
        raise CliError(exc.message) from exc
    except asyncpg.PostgresError as exc:
        raise CliError(f"database error ({type(exc).__name__}): {exc}") from exc

"""Releasing a pooled connection costs no round trip (``shared.infra.db.keep_session``)."""

from __future__ import annotations

from shared.infra.config import Settings
from shared.infra.db import create_pool


async def test_release_sends_no_reset_query_but_still_ends_an_open_transaction(database_url: str) -> None:
    """asyncpg's default reset (``RESET ALL`` and friends) ran on every release: one more round
    trip per pooled query. Ours sends nothing, so session state would survive a release, which
    is why no code of ours sets any (``keep_session``'s docstring); an open transaction is
    still rolled back by asyncpg itself."""
    settings = Settings(database_url=database_url, redis_url=None, db_pool_min_size=1, db_pool_max_size=1)
    pool = await create_pool(settings, application_name="pool-release-test")
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = '123s'")
            first_pid = conn.get_server_pid()
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == first_pid
            assert await conn.fetchval("SHOW statement_timeout") == "123s", "no RESET ALL was sent"
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE release_probe (n int) ON COMMIT DROP")
            assert not conn.is_in_transaction()
    finally:
        await pool.close()

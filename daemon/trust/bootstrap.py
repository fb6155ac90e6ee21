"""``sluice credentials init``: the trust made (or read) before any daemon runs against an operator's
own NATS server, which needs the trust in its configuration before the daemon can connect."""

from __future__ import annotations

import asyncio
import contextlib

from daemon import store
from daemon.config import Settings
from daemon.runtime.embedded import EmbeddedPostgres, data_dir_lock
from daemon.trust import authority


async def server_config(settings: Settings, resolver_dir: str) -> str:
    """The nats-server configuration block of Sluice's NATS trust, made now if there is none, in
    ``SLUICE_DATABASE_URL``'s database or the data dir's embedded one (Sluice must not be running
    on that data dir: its embedded servers have one owner).

    Raises ``Unavailable`` when the database cannot be had.
    """
    async with contextlib.AsyncExitStack() as stack:
        database_url = settings.database_url
        if database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(data_dir_lock(settings.data_dir))
            postgres = EmbeddedPostgres(settings.data_dir / "postgres")
            database_url = await asyncio.to_thread(postgres.start)
            stack.push_async_callback(asyncio.to_thread, postgres.stop)
        pool = await store.create_pool(database_url, max_size=2)
        stack.push_async_callback(pool.close)
        async with pool.acquire() as conn:
            await store.migrate(conn)
        trust = await authority.ensure(pool)
        return trust.server_config(resolver_dir)

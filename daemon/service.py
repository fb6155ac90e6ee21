"""The control plane's lifetime: start what it needs, serve the API, shut down in reverse order.

Each resource registers its own teardown on an exit stack where it is acquired, so a failure half-way
through start-up releases exactly what was started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import structlog
from aiohttp import web

from daemon import bus, store
from daemon.api import make_app
from daemon.config import Settings, is_loopback
from daemon.embedded import EmbeddedNats, EmbeddedPostgres
from daemon.errors import SluiceError, Unavailable
from daemon.scheduler import Scheduler

log = structlog.get_logger(__name__)

POOL_CLOSE_TIMEOUT_S = 10.0


class ConfigurationError(SluiceError):
    code = "configuration"
    status = 400


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the running daemon can be reached."""

    api_url: str
    nats_url: str
    data_dir: Path


async def run_daemon(
    settings: Settings,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[Endpoints], None] = lambda endpoints: None,
) -> None:
    """Run the control plane until ``stop`` is set, then shut it down cleanly.

    Raises `ConfigurationError` for settings it cannot run with and `Unavailable` when PostgreSQL,
    NATS or the listening port cannot be had.
    """
    if not is_loopback(host) and not settings.api_token:
        raise ConfigurationError(
            f"listening on {host} exposes the API: set SLUICE_API_TOKEN, or listen on 127.0.0.1"
        )
    async with contextlib.AsyncExitStack() as stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.database_url is None or settings.nats_url is None:
            stack.enter_context(_data_dir_lock(settings.data_dir))
        database_url, nats_url = await _start_embedded(stack, settings)

        pool = await store.create_pool(database_url, max_size=20)
        stack.push_async_callback(_close_pool, pool)
        async with pool.acquire() as conn:
            applied = await store.migrate(conn)
            await _ensure_default_datastore(conn, settings.data_dir)
        log.info("store_ready", migrations_applied=applied)

        nc = await bus.connect(nats_url, creds=settings.nats_creds)
        stack.push_async_callback(_drain, nc)
        sources = await bus.SourceStore.open(nc)
        scheduler = await Scheduler.start(
            stack, pool=pool, nc=nc, settings=settings.dispatch, database_url=database_url
        )

        runner = web.AppRunner(
            make_app(pool=pool, nc=nc, sources=sources, api_token=settings.api_token, scheduler=scheduler),
            handle_signals=False,
            access_log=None,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, host, port, shutdown_timeout=5.0).start()
        except OSError as exc:
            raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

        endpoints = Endpoints(
            api_url=f"http://{_url_host(host)}:{port}", nats_url=nats_url, data_dir=settings.data_dir
        )
        log.info(
            "daemon_ready", api_url=endpoints.api_url, nats_url=nats_url, data_dir=str(settings.data_dir)
        )
        on_ready(endpoints)
        await stop.wait()
        log.info("daemon_stopping")
    log.info("daemon_stopped")


async def _start_embedded(stack: contextlib.AsyncExitStack, settings: Settings) -> tuple[str, str]:
    """The database and NATS URLs, starting an embedded server for each one not configured.

    Both servers start at once; each that started stops with ``stack``, also when the other failed.
    """
    servers: dict[str, EmbeddedPostgres | EmbeddedNats] = {}
    if settings.database_url is None:
        servers["database"] = EmbeddedPostgres(settings.data_dir / "postgres")
    if settings.nats_url is None:
        servers["nats"] = EmbeddedNats(settings.data_dir / "nats")
    results = await asyncio.gather(
        *(asyncio.to_thread(server.start) for server in servers.values()), return_exceptions=True
    )
    for server, result in zip(servers.values(), results, strict=True):
        if not isinstance(result, BaseException):
            stack.push_async_callback(asyncio.to_thread, server.stop)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    urls = dict(zip(servers, results, strict=True))
    return urls.get("database", settings.database_url), urls.get("nats", settings.nats_url)


async def _ensure_default_datastore(conn, data_dir: Path) -> None:
    """The `default` datastore always exists; a user may point it elsewhere, so never overwrite it."""
    if await store.get_datastore(conn, "default") is None:
        path = data_dir / "datastores" / "default"
        path.mkdir(parents=True, exist_ok=True)
        await store.upsert_datastore(conn, "default", "local", {"path": str(path)})


async def _close_pool(pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
    except TimeoutError:
        log.warning("store_close_timeout", timeout_s=POOL_CLOSE_TIMEOUT_S)
        pool.terminate()


async def _drain(nc) -> None:
    try:
        await nc.drain()
    except Exception as exc:  # a broken connection at shutdown must not stop the rest of the teardown
        log.warning("nats_drain_failed", error=str(exc) or type(exc).__name__)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path):
    """One Sluice per data dir: its embedded servers' files must have one owner."""
    path = data_dir / "sluice.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise Unavailable(f"another Sluice (pid {owner}) is running with data dir {data_dir}") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host

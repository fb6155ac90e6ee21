"""The control plane's lifetime: start what it needs, serve the API, shut down in reverse order.

Each resource registers its own teardown on an exit stack where it is acquired, so a failure half-way
through start-up releases exactly what was started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from daemon import store
from daemon.api import NatsAccess, make_app
from daemon.api.access import AccessSettings
from daemon.api.tokens import admin_token_file
from daemon.config import Settings, is_loopback
from daemon.errors import SluiceError, Unavailable
from daemon.runtime import bus
from daemon.runtime.embedded import EmbeddedNats, EmbeddedPostgres, data_dir_lock
from daemon.runtime.scheduler import Scheduler
from daemon.trust import authority, local
from kit.nats import raw_credentials
from kit.redaction import redacted_urls

log = structlog.get_logger(__name__)

POOL_CLOSE_TIMEOUT_S = 10.0


class ConfigurationError(SluiceError):
    code = "configuration"
    status = 400


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the running daemon can be reached, and the credentials files for what runs beside it
    (when its NATS is embedded: ``service_creds`` for local services, ``agent_creds`` by agent)."""

    api_url: str
    nats_url: str
    data_dir: Path
    service_creds: Path | None = None
    agent_creds: dict[str, Path] = dataclasses.field(default_factory=dict)


async def run_daemon(
    settings: Settings,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[Endpoints], None] = lambda endpoints: None,
    local_agents: Sequence[str] = (),
) -> None:
    """Run the control plane until ``stop`` is set, then shut it down cleanly.

    With an embedded NATS server, Sluice's NATS trust is made on first start and the server enforces
    it; credentials files are written for local services and for the agents named in
    ``local_agents``.

    Raises `ConfigurationError` for settings it cannot run with and `Unavailable` when PostgreSQL,
    NATS or the listening port cannot be had.
    """
    if not is_loopback(host) and not settings.api_token:
        raise ConfigurationError(
            f"listening on {host} exposes the API: set SLUICE_API_TOKEN, or listen on 127.0.0.1"
        )
    if settings.nats_url is None and (settings.nats_replicas or 1) > 1:
        raise ConfigurationError(
            f"SLUICE_NATS_REPLICAS={settings.nats_replicas} needs a NATS cluster (SLUICE_NATS_URL): "
            "the embedded NATS server is one server, which keeps one copy"
        )
    async with contextlib.AsyncExitStack() as stack:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        access = AccessSettings(
            admin_token=settings.api_token or admin_token_file(settings.token_file),
            hosts=settings.api_hosts | _served_hosts(host),
            max_body=settings.api_max_body,
            max_upload=settings.api_max_upload,
        )
        if settings.database_url is None or settings.nats_url is None:
            stack.enter_context(data_dir_lock(settings.data_dir))
        database_url = settings.database_url or await _start_embedded(
            stack, EmbeddedPostgres(settings.data_dir / "postgres")
        )

        pool = await store.create_pool(database_url, max_size=20)
        stack.push_async_callback(_close_pool, pool)
        async with pool.acquire() as conn:
            applied = await store.migrate(conn)
            await _ensure_default_datastore(conn, settings.data_dir)
        log.info("store_ready", migrations_applied=applied)

        trust = await authority.load(pool)
        if settings.nats_url is None:
            trust = trust or await authority.ensure(pool)
            embedded = EmbeddedNats(settings.data_dir / "nats", trust=(trust.server_config, trust.account))
            nats_options = settings.nats.with_urls(await _start_embedded(stack, embedded))
        else:
            nats_options = settings.nats.with_urls(settings.nats_url)
        own_options = nats_options
        if nats_options.creds is None and trust is not None:
            own_options = nats_options.with_creds(raw_credentials(trust.daemon_creds()))
        nc = await bus.connect(own_options)
        stack.push_async_callback(_drain, nc)
        nats_auth = settings.nats_url is None or not await bus.strangers_may_publish(nats_options, nc)
        if not nats_auth:
            log.warning(
                "nats_open",
                nats_url=redacted_urls(nats_options.urls),
                problem="clients without credentials may publish on sluice.>: anyone who reaches NATS "
                "can run commands on the agents (see README, Running it for real)",
            )
        service_creds, agent_creds = None, {}
        if settings.nats_url is None:
            service_creds, agent_creds = await _local_credentials(pool, settings.data_dir, local_agents)
        sources = await bus.SourceStore.open(nc, replicas=settings.nats_replicas)
        scheduler = await Scheduler.start(
            stack,
            pool=pool,
            nc=nc,
            settings=settings.dispatch,
            database_url=database_url,
            replicas=settings.nats_replicas,
        )

        runner = web.AppRunner(
            make_app(
                pool=pool,
                nc=nc,
                sources=sources,
                access=access,
                scheduler=scheduler,
                nats=NatsAccess(options=own_options, auth=nats_auth),
            ),
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
            api_url=f"http://{_url_host(host)}:{port}",
            nats_url=nats_options.urls,
            data_dir=settings.data_dir,
            service_creds=service_creds,
            agent_creds=agent_creds,
        )
        # What start-up made lives as long as the daemon: out of the collector's full passes, which
        # scanned it all and stopped the event loop 50-70 ms at a time (about once a second under
        # load: the late outliers of live cron fires).
        gc.collect()
        gc.freeze()
        log.info(
            "daemon_ready",
            api_url=endpoints.api_url,
            nats_url=redacted_urls(endpoints.nats_url),
            nats_auth=nats_auth,
            data_dir=str(settings.data_dir),
        )
        on_ready(endpoints)
        await stop.wait()
        log.info("daemon_stopping")
    log.info("daemon_stopped")


async def _start_embedded(stack: contextlib.AsyncExitStack, server: EmbeddedPostgres | EmbeddedNats) -> str:
    """Starts ``server`` (in a thread: it blocks) to stop with ``stack``; returns its URL."""
    url = await asyncio.to_thread(server.start)
    stack.push_async_callback(asyncio.to_thread, server.stop)
    return url


async def _local_credentials(
    pool: asyncpg.Pool, data_dir: Path, agents: Sequence[str]
) -> tuple[Path, dict[str, Path]]:
    """The credentials files of local services and of ``agents``, valid now."""
    service = await local.ensure(
        pool, local.service_creds_path(data_dir), "service", local.SERVICE, local.SERVICE_GRANT
    )
    agent_creds = {
        name: await local.ensure(pool, local.agent_creds_path(data_dir, name), "agent", name)
        for name in agents
    }
    return service, agent_creds


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


def _served_hosts(host: str) -> frozenset[str]:
    """The ``Host`` names a daemon listening on ``host`` answers to besides loopback's: that
    address, unless it is every address (then only ``SLUICE_API_HOSTS`` name it)."""
    return frozenset() if host in ("0.0.0.0", "::", "") else frozenset({host.lower()})


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host

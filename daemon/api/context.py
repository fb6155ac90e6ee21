"""Typed keys for what the handlers share through the aiohttp application."""

from __future__ import annotations

import dataclasses

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from daemon.runtime.bus import SourceStore
from kit.nats import NatsOptions

POOL = web.AppKey("pool", asyncpg.Pool)
NATS_CLIENT = web.AppKey("nats", NATS)
SOURCES = web.AppKey("sources", SourceStore)


@dataclasses.dataclass(frozen=True, slots=True)
class NatsAccess:
    """How the daemon reaches NATS (to push account updates as the system account) and whether
    the server keeps clients without credentials out (``auth``)."""

    options: NatsOptions
    auth: bool


NATS_ACCESS = web.AppKey("nats_settings", NatsAccess)


def _scheduler_key():
    from daemon.runtime.scheduler import Scheduler

    return web.AppKey("scheduler", Scheduler)


SCHEDULER = _scheduler_key()
"""Absent when the app serves without a scheduler (catalog-only tests): run operations are then 503."""

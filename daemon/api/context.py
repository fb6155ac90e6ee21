"""Typed keys for what the handlers share through the aiohttp application."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from daemon.bus import SourceStore

POOL = web.AppKey("pool", asyncpg.Pool)
NATS_CLIENT = web.AppKey("nats", NATS)
SOURCES = web.AppKey("sources", SourceStore)
API_TOKEN = web.AppKey("api_token", str)


def _scheduler_key():
    from daemon.scheduler import Scheduler

    return web.AppKey("scheduler", Scheduler)


SCHEDULER = _scheduler_key()
"""Absent when the app serves without a scheduler (catalog-only tests): run operations are then 503."""

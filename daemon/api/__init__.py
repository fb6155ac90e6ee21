"""The HTTP API (contract §4), served by aiohttp under /api/v1."""

from daemon.api.app import make_app
from daemon.api.context import NatsAccess

__all__ = ["NatsAccess", "make_app"]

"""The HTTP API (contract §4), served by aiohttp under /api/v1."""

from daemon.api.app import make_app

__all__ = ["make_app"]

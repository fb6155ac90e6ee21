"""Server-sent events of run and step state changes, as they commit (``?run=<id>`` for one run)."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from daemon.api.context import SCHEDULER
from daemon.api.contract import endpoint
from daemon.api.http import open_stream
from daemon.errors import Unavailable

routes = web.RouteTableDef()

KEEPALIVE_S = 15.0
_encoder = msgspec.json.Encoder()


@routes.get("/api/v1/events")
@endpoint("read", query={"run": {"type": "string", "format": "uuid"}})
async def events(request: web.Request) -> web.StreamResponse:
    """A stream of `event: run` and `event: step` changes; a keep-alive comment every 15 s."""
    scheduler = request.app.get(SCHEDULER)
    if scheduler is None:
        raise Unavailable("this daemon does not run the scheduler")
    announcer = scheduler.announcer
    listener = announcer.listen(request.query.get("run") or None)
    try:
        with open_stream(request):
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            while not listener.overflowed:
                try:
                    change = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(
                    b"event: " + change.kind.encode() + b"\ndata: " + _encoder.encode(change.data) + b"\n\n"
                )
            # Too slow to keep up: end the stream, the client reconnects and reads current state.
            await response.write_eof()
            return response
    finally:
        announcer.unlisten(listener)

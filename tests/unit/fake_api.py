"""A fake Sluice API for CLI tests: a real HTTP server that answers canned, contract-shaped bodies and
records every request. Its fixtures ``api`` and ``local_tz`` reach the tests through conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeApi:
    """Canned answers by (method, path or path?query); anything else is the contract's 404 envelope.

    A body is JSON, text (a ``str``), None (empty) or an aiohttp handler. Answers given in turn are
    served one per request; the last one repeats.
    """

    url: str = ""
    answers: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def answer(self, method: str, target: str, body: Any = None, *, status: int = 200) -> None:
        self.answer_in_turn(method, target, [body], status=status)

    def answer_in_turn(self, method: str, target: str, bodies: Sequence[Any], *, status: int = 200) -> None:
        self.answers[(method, "/api/v1" + target)] = [(status, body) for body in bodies]

    def requested(self, method: str, target: str) -> list[Recorded]:
        """The recorded requests of ``method`` on ``target`` (a path, without the query)."""
        return [r for r in self.requests if (r.method, r.path) == (method, "/api/v1" + target)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Recorded(
                request.method, request.path, dict(request.query), dict(request.headers), await request.read()
            )
        )
        key = (request.method, request.path_qs)
        if key not in self.answers:
            key = (request.method, request.path)
        turns = self.answers.get(key, [(404, envelope("not_found", f"{request.path} not found"))])
        status, body = turns.pop(0) if len(turns) > 1 else turns[0]
        if callable(body):
            return await body(request)
        if body is None:
            return web.Response(status=status)
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        return web.json_response(body, status=status)


def envelope(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def event_stream(*events: tuple[str, Any] | str, close: bool = True) -> Handler:
    """A handler answering ``text/event-stream``: each ``(event, data)`` as one event (data as JSON),
    each bare string written as is (comments, malformed lines). With ``close=False`` the stream
    then stays open and silent until the client leaves."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for item in events:
            if isinstance(item, str):
                await response.write(item.encode())
            else:
                await response.write(f"event: {item[0]}\ndata: {json.dumps(item[1])}\n\n".encode())
        for _ in range(200):  # until the client leaves, for 10 s at most
            if close or request.transport is None or request.transport.is_closing():
                break
            await asyncio.sleep(0.05)
        return response

    return handler


@pytest.fixture
def api() -> Iterator[FakeApi]:
    """A FakeApi served by aiohttp on a free loopback port, in a thread with its own event loop."""
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    loop = asyncio.new_event_loop()

    async def start() -> int:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner.addresses[0][1]

    fake.url = f"http://127.0.0.1:{loop.run_until_complete(start())}"
    thread = threading.Thread(target=loop.run_forever, name="fake-api", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


def invoke(
    cli: click.Group, api: FakeApi, *args: str, token: str | None = None, stdin: str | None = None
) -> Result:
    """Run ``cli`` as the ``sluice`` command against ``api``."""
    env = {
        "SLUICE_API_URL": api.url,
        "SLUICE_API_TOKEN": token or "",
        "SLUICE_DATA_DIR": "/nonexistent/sluice",
    }
    return CliRunner().invoke(cli, list(args), env=env, input=stdin)


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """The argv of every command and subcommand under ``group``: ``["runs"]``, ``["runs", "show"]`` …"""
    for name, command in group.commands.items():
        yield [*prefix, name]
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


def assert_help_everywhere(cli: click.Group) -> None:
    """``--help`` works on every command of ``cli`` and prints its usage."""
    for argv in command_paths(cli):
        result = CliRunner().invoke(cli, [*argv, "--help"])
        assert result.exit_code == 0, argv
        assert "Usage:" in result.stdout, argv


@pytest.fixture
def local_tz() -> Iterator[None]:
    """Central European time, so local-time output is known (a POSIX rule: no tzdata needed)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
        time.tzset()
        yield
    time.tzset()

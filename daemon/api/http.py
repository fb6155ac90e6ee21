"""Request and response helpers shared by the handlers: JSON bodies, paths, pagination."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from daemon.api.contract import DEFAULT_LIMIT, MAX_LIMIT, endpoint_of
from daemon.errors import BadRequest
from daemon.limits import INT32_MAX, INT64_MAX

T = TypeVar("T")

_encoder = msgspec.json.Encoder()

OPEN_STREAMS = web.AppKey("open_streams", set)
"""The handler tasks of long-lived responses (server-sent events) now open."""


@contextlib.contextmanager
def open_stream(request: web.Request) -> Iterator[None]:
    """Marks the running handler as a long-lived stream, which :func:`end_streams` ends."""
    streams: set[asyncio.Task] = request.app[OPEN_STREAMS]
    task = asyncio.current_task()
    streams.add(task)
    try:
        yield
    finally:
        streams.discard(task)


async def end_streams(app: web.Application) -> None:
    """``on_shutdown``: end the open streams (their clients see the stream close) instead of letting
    the server's shutdown wait its full timeout for them; also those whose client left already, which
    a stream only notices at its next write."""
    for task in list(app[OPEN_STREAMS]):
        task.cancel()


def json_response(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


async def read_body(request: web.Request) -> Any:
    """The request's JSON body as its route declares it (``endpoint(body=…)``); a malformed or
    ill-typed body is a 400 naming the field."""
    declared = endpoint_of(request.match_info.handler, request.method)
    assert declared.body is not None, f"{request.path} declares no body"
    return await read_json(request, declared.body)


async def read_json(request: web.Request, type_: type[T]) -> T:
    """The request's JSON body as ``type_``; a malformed or ill-typed body is a 400 naming the field."""
    body = await request.read()
    if not body:
        raise BadRequest("the request needs a JSON body")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def int_arg(request: web.Request, name: str) -> int:
    """A positive integer from the path, e.g. a version number; accepts "3" and "v3"."""
    return _bounded(name, request.match_info[name].removeprefix("v"), 1, INT32_MAX)


def int_query(
    request: web.Request, name: str, *, default: int | None = None, maximum: int = INT32_MAX
) -> int | None:
    """A positive integer from ``?name=`` (``default`` when absent)."""
    raw = request.query.get(name)
    return default if raw is None else _bounded(name, raw, 1, maximum)


def limit_arg(request: web.Request) -> int:
    return int_query(request, "limit", default=DEFAULT_LIMIT, maximum=MAX_LIMIT)  # type: ignore[return-value]


def _bounded(name: str, raw: str, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw[:40]!r}") from None
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}, not {value}")
    return value


def encode_cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(_encoder.encode(key)).decode()


def decode_cursor(request: web.Request, type_: type[T]) -> T | None:
    """The ``type_`` key after which a list continues, from ``?cursor=``; None on the first page."""
    raw = request.query.get("cursor")
    if not raw:
        return None
    try:
        key = msgspec.json.decode(base64.urlsafe_b64decode(raw.encode()), type=type_)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise BadRequest("cursor is not one this API returned") from None
    if isinstance(key, int) and not -INT64_MAX <= key <= INT64_MAX:
        raise BadRequest("cursor is not one this API returned")
    return key


def page(items: list[Any], limit: int, key) -> dict[str, Any]:
    """The contract's list shape; ``items`` holds up to limit + 1 rows, the extra one says more exist."""
    more = len(items) > limit
    items = items[:limit]
    return {
        "items": [item.to_json() for item in items],
        "next_cursor": encode_cursor(key(items[-1])) if more else None,
    }

"""A small synchronous client for the daemon's HTTP API (contract §4), over the standard library.

Every failure becomes a :class:`~daemon.errors.SluiceError`: :class:`ApiError` when the API answered
with an error status, :class:`ApiUnreachable` when no answer came. Commands never see urllib's errors.
Server-sent event streams (``GET /events``, followed logs) are read with :meth:`ApiClient.stream`.
"""

from __future__ import annotations

import dataclasses
import http.client
import json as jsonlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

from daemon.config import Settings
from daemon.errors import BadRequest, SluiceError, Unavailable
from kit.redaction import redacted_url

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 30.0
UPLOAD_TIMEOUT = 300.0
_CHUNK = 256 * 1024
_MAX_EVENT_LINE = 1024 * 1024


class ApiError(SluiceError):
    """The API answered with an HTTP error status and (usually) the contract's error envelope.

    ``status`` is the HTTP status, ``code``/``message``/``details`` come from the envelope.
    """

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.status = status
        self.code = code


class BadAnswer(SluiceError):
    """The API answered something this client cannot read (not JSON, or not the contract's shape)."""

    code = "bad_answer"
    status = 502


class ApiUnreachable(Unavailable):
    """No HTTP answer: the connection failed, was dropped, or timed out."""

    code = "unreachable"


def path(*segments: str | int) -> str:
    """An API path from raw segments, each percent-encoded: ``path("pipelines", name)``."""
    return "".join("/" + urllib.parse.quote(str(segment), safe=":@") for segment in segments)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiClient:
    """Talks to one daemon at ``base_url`` (e.g. ``http://127.0.0.1:8470``), with an optional bearer token."""

    base_url: str
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if urllib.parse.urlsplit(self.base_url).scheme not in ("http", "https"):
            raise BadRequest(f"SLUICE_API_URL must be an http:// or https:// URL, not {self.base_url!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiClient:
        return cls(base_url=settings.api_url, token=settings.client_token())

    def request(
        self,
        method: str,
        api_path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> Any:
        """Send one request to ``/api/v1{api_path}`` and return the decoded JSON answer (None when empty).

        ``json`` is encoded as the body; otherwise ``body`` is sent as is with the caller's
        Content-Type. ``timeout`` (default ``self.timeout``) bounds the connect and every socket
        read and write. ``on_sent(n)`` is called as each chunk of ``body`` goes out, for progress.
        Raises ApiError for HTTP statuses >= 400 and ApiUnreachable when no answer arrives.
        """
        request = self._build(method, api_path, json, body, headers, query, on_sent)
        status, payload = self._send(request, self.timeout if timeout is None else timeout)
        return _decode(payload, status) if payload else None

    def text(self, api_path: str, *, query: Mapping[str, str | int] | None = None) -> str:
        """``GET /api/v1{api_path}`` answered as text (``text/plain``), e.g. a step's log.

        Bounded and failing like :meth:`request`; bytes that are not UTF-8 are replaced, not refused.
        """
        request = self._build("GET", api_path, None, None, {"Accept": "text/plain"}, query, None)
        return self._send(request, self.timeout)[1].decode("utf-8", errors="replace")

    def stream(
        self,
        api_path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        idle_timeout: float | None = None,
    ) -> EventStream:
        """Open ``GET /api/v1{api_path}`` as a server-sent event stream; iterate the answer for events.

        Connecting and receiving the answer's headers are bounded by ``self.timeout``, so when this
        returns the daemon has the subscription. Reading then waits up to ``idle_timeout`` for each
        line (None: as long as it takes); comment lines, which servers send as heartbeats, count as
        lines and are otherwise ignored. Raises ApiError for HTTP statuses >= 400, BadAnswer when the
        answer is not ``text/event-stream``, ApiUnreachable when no answer arrives.
        """
        url = urllib.parse.urlsplit(self._url(api_path, query))
        connection_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = connection_type(url.netloc, timeout=self.timeout)
        target = url.path + (f"?{url.query}" if url.query else "")
        try:
            connection.request("GET", target, headers=self._headers({"Accept": "text/event-stream"}))
            sock = connection.sock  # the response may take it over from the connection
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise self._unreachable(error, self.timeout) from None
        if response.status >= 400 or response.headers.get_content_type() != "text/event-stream":
            try:
                if response.status >= 400:
                    raise _error_from(response.status, response.reason, response.read)
                raise BadAnswer(
                    f"the Sluice API answered {api_path} with {response.headers.get_content_type()}, "
                    "not an event stream"
                )
            finally:
                response.close()
                connection.close()
        if sock is not None:
            sock.settimeout(idle_timeout)
        source = self.base_url + API_PREFIX + api_path
        return EventStream(connection, response, source=source, idle_timeout=idle_timeout)

    def _send(self, request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            raise _api_error(error) from None
        except urllib.error.URLError as error:
            raise self._unreachable(error.reason, timeout) from None
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error, timeout) from None

    def _build(
        self,
        method: str,
        api_path: str,
        json: Any,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        query: Mapping[str, str | int] | None,
        on_sent: Callable[[int], None] | None,
    ) -> urllib.request.Request:
        all_headers: dict[str, str] = {}
        if json is not None:
            body = jsonlib.dumps(json).encode()
        if method not in ("GET", "HEAD"):
            # The API takes no mutating request without one (a browser's form post has another).
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        data: bytes | Iterator[bytes] | None = body
        if body is not None and on_sent is not None:
            # urllib needs the length up front when the body is an iterator of chunks.
            all_headers["Content-Length"] = str(len(body))
            data = _chunks(body, on_sent)
        return urllib.request.Request(
            self._url(api_path, query), data=data, headers=self._headers(all_headers), method=method
        )

    def _url(self, api_path: str, query: Mapping[str, str | int] | None) -> str:
        url = self.base_url + API_PREFIX + api_path
        return url + "?" + urllib.parse.urlencode(query) if query else url

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "sluice-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers | dict(extra)

    def _unreachable(self, reason: object, timeout: float) -> ApiUnreachable:
        if isinstance(reason, TimeoutError):
            return ApiUnreachable(
                f"the Sluice API at {redacted_url(self.base_url)} did not answer within {timeout:g} s"
            )
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror
        else:
            why = str(reason) or type(reason).__name__
        return ApiUnreachable(
            f"cannot reach the Sluice API at {redacted_url(self.base_url)}: {why} "
            "(is `sluice up` running? set SLUICE_API_URL)"
        )


def _chunks(body: bytes, on_sent: Callable[[int], None]) -> Iterator[bytes]:
    for start in range(0, len(body), _CHUNK):
        chunk = body[start : start + _CHUNK]
        yield chunk
        on_sent(len(chunk))


def _decode(payload: bytes, status: int) -> Any:
    try:
        return jsonlib.loads(payload)
    except ValueError:
        raise BadAnswer(f"the Sluice API answered HTTP {status} with something that is not JSON") from None


def _api_error(error: urllib.error.HTTPError) -> ApiError:
    return _error_from(error.code, error.reason, error.read)


def _error_from(status: int, reason: str | None, read: Callable[[], bytes]) -> ApiError:
    """The contract's envelope ``{"error": {"code", "message", "details"}}``, or the bare status line."""
    try:
        envelope = jsonlib.loads(read())["error"]
        return ApiError(status, str(envelope["code"]), str(envelope["message"]), envelope.get("details"))
    except (OSError, http.client.HTTPException, ValueError, TypeError, KeyError, AttributeError):
        reason = reason or http.client.responses.get(status, "")
        return ApiError(status, f"http_{status}", f"the Sluice API answered HTTP {status} {reason}".rstrip())


@dataclasses.dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event of a ``text/event-stream``: its type (``message`` when unnamed) and data."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        """The data decoded as JSON; BadAnswer when it is not."""
        try:
            return jsonlib.loads(self.data)
        except ValueError:
            raise BadAnswer(f"the Sluice API sent a {self.event!r} event whose data is not JSON") from None


def parse_events(lines: Iterable[str]) -> Iterator[ServerSentEvent]:
    """Events from the lines of an event stream, as the SSE specification interprets them.

    A blank line dispatches the fields gathered since the last one (nothing when no ``data`` came);
    ``:`` lines are comments; ``data`` lines join with newlines; unknown fields are ignored; an event
    cut off by the end of the stream is dropped.
    """
    kind, last_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.removesuffix("\n").removesuffix("\r")
        if not line:
            if data:
                yield ServerSentEvent(kind or "message", "\n".join(data), last_id)
            kind, data = "", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            last_id = value


class EventStream:
    """An open ``text/event-stream`` answer (see :meth:`ApiClient.stream`): a context manager and an
    iterable of :class:`ServerSentEvent` that ends when the server closes the stream.

    Iterating raises ApiUnreachable when the connection breaks or stays silent past ``idle_timeout``,
    BadAnswer for a line over 1 MiB.
    """

    def __init__(
        self,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        *,
        source: str,
        idle_timeout: float | None,
    ) -> None:
        self._connection = connection
        self._response = response
        self._source = source
        self._idle_timeout = idle_timeout

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._response.close()
        self._connection.close()

    def __iter__(self) -> Iterator[ServerSentEvent]:
        return parse_events(self._lines())

    def _lines(self) -> Iterator[str]:
        while True:
            try:
                raw = self._response.readline(_MAX_EVENT_LINE + 1)
            except TimeoutError:
                raise ApiUnreachable(
                    f"the event stream {self._source} stayed silent for {self._idle_timeout:g} s"
                ) from None
            except (OSError, http.client.HTTPException) as error:
                raise ApiUnreachable(f"the event stream {self._source} broke: {error}") from None
            if not raw:
                return
            if len(raw) > _MAX_EVENT_LINE:
                raise BadAnswer(f"the event stream {self._source} sent a line over 1 MiB")
            yield raw.decode("utf-8", errors="replace")

"""A small synchronous client for the daemon's HTTP API (contract §4), over the standard library.

Every failure becomes a :class:`~daemon.errors.SluiceError`: :class:`ApiError` when the API answered
with an error status, :class:`ApiUnreachable` when no answer came. Commands never see urllib's errors.
"""

from __future__ import annotations

import dataclasses
import http.client
import json as jsonlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from daemon.config import Settings
from daemon.errors import BadRequest, SluiceError, Unavailable

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = 30.0
UPLOAD_TIMEOUT = 300.0
_CHUNK = 256 * 1024


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
        return cls(base_url=settings.api_url, token=settings.api_token)

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
        timeout = self.timeout if timeout is None else timeout
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as error:
            raise _api_error(error) from None
        except urllib.error.URLError as error:
            raise self._unreachable(error.reason, timeout) from None
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error, timeout) from None
        return _decode(payload, status) if payload else None

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
        url = self.base_url + API_PREFIX + api_path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        all_headers = {"Accept": "application/json", "User-Agent": "sluice-cli"}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if json is not None:
            body = jsonlib.dumps(json).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        data: bytes | Iterator[bytes] | None = body
        if body is not None and on_sent is not None:
            # urllib needs the length up front when the body is an iterator of chunks.
            all_headers["Content-Length"] = str(len(body))
            data = _chunks(body, on_sent)
        return urllib.request.Request(url, data=data, headers=all_headers, method=method)

    def _unreachable(self, reason: object, timeout: float) -> ApiUnreachable:
        if isinstance(reason, TimeoutError):
            return ApiUnreachable(f"the Sluice API at {self.base_url} did not answer within {timeout:g} s")
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror
        else:
            why = str(reason) or type(reason).__name__
        return ApiUnreachable(
            f"cannot reach the Sluice API at {self.base_url}: {why} "
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
    """The contract's envelope ``{"error": {"code", "message", "details"}}``, or the bare status line."""
    status = error.code
    try:
        envelope = jsonlib.loads(error.read())["error"]
        return ApiError(status, str(envelope["code"]), str(envelope["message"]), envelope.get("details"))
    except (OSError, http.client.HTTPException, ValueError, TypeError, KeyError, AttributeError):
        reason = error.reason or http.client.responses.get(status, "")
        return ApiError(status, f"http_{status}", f"the Sluice API answered HTTP {status} {reason}".rstrip())

"""Who may use the API, and how: bearer tokens with scopes, and the protections that keep a browser
from driving it (the ``Host`` it answers to, the ``Origin`` it trusts, the content types and body
sizes it takes). One middleware enforces them all, before any handler runs.

Each route states what it needs with :func:`daemon.api.contract.endpoint`; a route that states
nothing needs ``read`` for GET and ``admin`` for anything else, so a route added without thought is
closed, not open.

A person in a browser logs in with a token once; the HttpOnly, SameSite=Strict cookie the login page
sets (:data:`SESSION_COOKIE`) holds a random session id that stands for that token (never the token
itself) until it expires, the person logs out, or the token is revoked. A request that a cookie
authenticates and that changes something must carry the ``Origin`` of this daemon's own pages: with
the content types taken (JSON, YAML), that is what keeps another site's page from using a person's
session.

Scopes: ``read`` (GETs and streams), ``run`` (start and cancel runs, pause and resume triggers),
``publish`` (apply, version lifecycle), ``admin`` (everything: tokens and NATS credentials too).
``run`` and ``publish`` include ``read``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import asyncpg
from aiohttp import web

from daemon.api.contract import READING, Scope, check_parameters, endpoint_of
from daemon.errors import Forbidden, Misdirected, TooLarge, Unauthorized, UnsupportedMediaType
from daemon.store import sessions as session_store
from daemon.store import tokens as token_store

SCOPES: tuple[Scope, ...] = typing.get_args(Scope)
_GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "run": frozenset({"read", "run"}),
    "publish": frozenset({"read", "publish"}),
    "admin": frozenset(SCOPES),
}
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/login"})
OPEN_PREFIXES = ("/static/",)
SESSION_COOKIE = "sluice_session"
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_CACHE_S = 5.0
"""How long a token's scope is trusted without asking the database again (a revocation made on
another daemon takes this long to reach this one; on this one it is at once)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """``admin_token``: the token every scope is granted to (``SLUICE_API_TOKEN``, or the data dir's
    ``credentials/api-token``); ``hosts``: the ``Host`` names the API answers to besides loopback's;
    ``max_body`` and ``max_upload``: the largest bodies taken (uploads: source snapshots)."""

    admin_token: str
    hosts: frozenset[str] = frozenset()
    max_body: int = 1024 * 1024
    max_upload: int = 512 * 1024 * 1024


class Access:
    """The middleware's state: settings, and the scopes of tokens read from the database lately."""

    def __init__(self, settings: AccessSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self._pool = pool
        self._admin = digest(settings.admin_token)
        self._known: dict[str, tuple[str | None, float]] = {}

    async def scope_of(self, token: str) -> str | None:
        """The scope ``token`` was granted, or None for an unknown or revoked token."""
        hashed = digest(token)
        if hmac.compare_digest(hashed, self._admin):
            return "admin"
        return await self._cached(hashed, lambda: token_store.scope_of(self._pool, hashed))

    async def session_scope(self, session: str) -> str | None:
        """The scope of the token that the web UI session ``session`` (the cookie's value) stands
        for, or None for no such session, one that expired or was closed, or whose token was revoked."""
        hashed = digest(session)

        async def read() -> str | None:
            found = await session_store.session_token(self._pool, hashed)
            if found is None:
                return None
            token_digest, scope = found
            return "admin" if hmac.compare_digest(token_digest, self._admin) else scope

        return await self._cached("session:" + hashed, read)

    async def _cached(self, key: str, read: Callable[[], Awaitable[str | None]]) -> str | None:
        now = time.monotonic()
        known = self._known.get(key)
        if known is not None and now - known[1] < TOKEN_CACHE_S:
            return known[0]
        scope = await read()
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[key] = (scope, now)
        return scope

    def forget(self) -> None:
        """A token was revoked, or a session closed, here: no cached scope outlives it."""
        self._known.clear()

    def allowed_host(self, host: str) -> bool:
        """Loopback, the names the daemon was given, and any address: DNS rebinding needs a name,
        and probes and scrapers address a daemon (a pod) by whatever address it has now."""
        name = _host_name(host).lower()
        return name in LOCAL_HOSTS or name in self.settings.hosts or _is_address(name)


ACCESS = web.AppKey("access", Access)


def digest(token: str) -> str:
    """How a token is stored: its SHA-256 (tokens are random, so no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def granted(scope: str | None, needed: Scope) -> bool:
    return scope is not None and needed in _GRANTS.get(scope, frozenset())


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = request.app[ACCESS]
    if not access.allowed_host(request.host):
        raise Misdirected(
            f"this API does not answer to the host {request.host!r}; "
            "add it to SLUICE_API_HOSTS if it is a name of this daemon"
        )
    origin = request.headers.get("Origin")
    if origin is not None and not _same_origin(origin, request):
        raise Forbidden(f"requests from the origin {origin!r} are refused")
    if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
        return await handler(request)
    needs = endpoint_of(request.match_info.handler, request.method)
    if request.match_info.http_exception is not None:  # no such route: its own 404 or 405
        raise request.match_info.http_exception
    token, by_cookie = _credentials(request)
    if not token:
        scope = None
    elif by_cookie:
        scope = await access.session_scope(token)
    else:
        scope = await access.scope_of(token)
    if scope is None:
        if needs.page:
            raise web.HTTPSeeOther(login_location(request.path_qs))
        if not token:
            raise Unauthorized(
                "this API needs Authorization: Bearer <token> (sluice tokens, SLUICE_API_TOKEN)"
            )
        raise Unauthorized("the token is not valid (unknown or revoked)")
    if not granted(scope, needs.scope):
        raise Forbidden(f"this needs a token with the {needs.scope} scope; this one has {scope}")
    request[SCOPE] = scope
    check_parameters(request, needs)
    if request.method in READING:
        return await handler(request)
    if by_cookie and origin is None:
        raise Forbidden(
            "a change made with the session cookie must come from this daemon's own pages (it has no Origin)"
        )
    if request.content_type not in needs.content_types:
        raise UnsupportedMediaType(
            f"send Content-Type: {' or '.join(needs.content_types)}, not {request.content_type!r}"
        )
    limit = access.settings.max_upload if needs.upload else access.settings.max_body
    if request.content_length is None:  # no length: the body is cut off at the limit while it is read
        return await handler(request.clone(client_max_size=limit))
    if request.content_length > limit:
        raise TooLarge(f"the body is {request.content_length} bytes; this API takes at most {limit}")
    return await handler(request)


SCOPE = web.RequestKey("scope", str)
"""Where the guard leaves the scope of the request's token, for pages that offer only what it may do."""


def _credentials(request: web.Request) -> tuple[str, bool]:
    """The request's token, and whether it came from the session cookie rather than the header."""
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer "):
        return authorization.removeprefix("Bearer ").strip(), False
    return request.cookies.get(SESSION_COOKIE, ""), True


def login_location(then: str) -> str:
    """The login page, coming back to ``then`` (a path of this daemon) after it."""
    return "/login?" + urlencode({"next": then}) if then not in ("", "/") else "/login"


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _same_origin(origin: str, request: web.Request) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


def _host_name(host: str) -> str:
    """The name in a ``Host`` header: ``[::1]:8470`` -> ``::1``, ``example.com:80`` -> ``example.com``."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

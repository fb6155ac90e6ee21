"""How Sluice's processes reach NATS: servers, credentials (and the claims a ``.creds`` file holds),
TLS, a private inbox, and the one error type for a NATS that cannot be reached or refuses."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import ssl
from collections import UserString
from collections.abc import Callable, Mapping

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials

from kit.redaction import redacted_urls

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""One try at one server."""
FIRST_CONNECT_TIMEOUT_S = 30.0
"""All tries at the first connection; after it the client reconnects for as long as the process
lives, unless the server refuses it for good (its credentials were revoked)."""
DRAIN_TIMEOUT_S = 5
DEFAULT_URL = "nats://127.0.0.1:4222"

NatsErrors = (nats.errors.Error, OSError, TimeoutError)
"""What a NATS call can raise when the server is away, slow or refuses (JetStream's errors included)."""


class BusError(Exception):
    """NATS cannot be reached, or refuses what the process needs of it."""


@dataclasses.dataclass(frozen=True, slots=True)
class NatsOptions:
    """Where NATS is and how to prove who we are: ``urls`` (comma-separated), a ``.creds`` file (a
    path, or its text as ``RawCredentials``) and TLS files (a CA to trust, a client certificate)."""

    urls: str = DEFAULT_URL
    creds: str | UserString | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout_s: float = FIRST_CONNECT_TIMEOUT_S
    """How long the first connection may take (servers may be starting too) before giving up."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NatsOptions:
        """``SLUICE_NATS_URL``, ``SLUICE_NATS_CREDS``, ``SLUICE_NATS_TLS_CA``, ``SLUICE_NATS_TLS_CERT``,
        ``SLUICE_NATS_TLS_KEY`` and ``SLUICE_NATS_CONNECT_TIMEOUT`` (seconds).

        Raises ``ValueError`` for a connect timeout that is not a positive number.
        """
        raw_timeout = environ.get("SLUICE_NATS_CONNECT_TIMEOUT") or str(FIRST_CONNECT_TIMEOUT_S)
        try:
            timeout = float(raw_timeout)
        except ValueError:
            timeout = 0.0
        if not timeout > 0:
            raise ValueError(
                f"SLUICE_NATS_CONNECT_TIMEOUT must be a positive number of seconds, not {raw_timeout!r}"
            )
        return cls(
            urls=environ.get("SLUICE_NATS_URL") or DEFAULT_URL,
            creds=environ.get("SLUICE_NATS_CREDS") or None,
            tls_ca=environ.get("SLUICE_NATS_TLS_CA") or None,
            tls_cert=environ.get("SLUICE_NATS_TLS_CERT") or None,
            tls_key=environ.get("SLUICE_NATS_TLS_KEY") or None,
            connect_timeout_s=timeout,
        )

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.urls.split(",") if url.strip()]

    def tls_context(self) -> ssl.SSLContext | None:
        """A client TLS context when any TLS file is given (or a server URL says ``tls://``).

        Raises ``BusError`` for files that cannot be read or a certificate without its key.
        """
        wants_tls = any(url.startswith("tls://") for url in self.servers)
        if not (self.tls_ca or self.tls_cert or self.tls_key or wants_tls):
            return None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise BusError("SLUICE_NATS_TLS_CERT and SLUICE_NATS_TLS_KEY go together: set both or neither")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
            if self.tls_cert and self.tls_key:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise BusError(f"cannot load the NATS TLS files: {exc}") from exc
        return context

    def with_creds(self, creds: str | UserString | None) -> NatsOptions:
        return dataclasses.replace(self, creds=creds)

    def with_urls(self, urls: str) -> NatsOptions:
        return dataclasses.replace(self, urls=urls)


AGENT_TAG = "sluice:agent"
"""The tag of credentials Sluice made for an agent; their JWT's ``name`` is the agent's name."""


def creds_agent(path: str) -> str | None:
    """The agent a ``.creds`` file was made for by Sluice, or None for other credentials.

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it holds no user JWT.
    """
    claims = read_creds_claims(path)
    tags = claims.get("nats", {}).get("tags") or []
    return claims.get("name") if AGENT_TAG in tags else None


def read_creds_claims(path: str) -> dict:
    """The claims of the user JWT in a ``.creds`` file (unverified: the server verifies them).

    Raises ``OSError`` when the file cannot be read and ``ValueError`` when it holds no user JWT.
    """
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    try:
        token = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1].strip()
    except (ValueError, IndexError):
        raise ValueError("no NATS user JWT in it") from None
    return jwt_claims(token)


def jwt_claims(token: str) -> dict:
    """The claims of a JWT, unverified. Raises ``ValueError`` for anything that is not a JWT."""
    try:
        _, payload, _ = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError) as exc:
        raise ValueError("not a JWT") from exc
    if not isinstance(claims, dict):
        raise ValueError("not a JWT")
    return claims


def raw_credentials(text: str) -> UserString:
    """A ``.creds`` file's text, to connect with without writing it to disk."""
    return RawCredentials(text)


async def connect(
    options: NatsOptions,
    *,
    name: str,
    inbox_prefix: str | None = None,
    on_closed: Callable[[str], None] | None = None,
    first_timeout_s: float | None = None,
) -> NATS:
    """Connect to NATS; later losses of the server are reconnected for as long as it lets us.

    ``inbox_prefix`` keeps replies on subjects that only this identity may read. ``on_closed`` is
    called with the last error once the connection is closed for good: by our own close or drain,
    or by the server (credentials revoked or expired), which the caller tells apart.

    Raises ``BusError`` when no server answers within ``first_timeout_s`` (default: the options')
    or the server refuses us.
    """
    first_timeout_s = options.connect_timeout_s if first_timeout_s is None else first_timeout_s
    servers = options.servers
    if not servers:
        raise BusError("no NATS URL given (SLUICE_NATS_URL)")
    tls = options.tls_context()
    client: NATS | None = None
    last_error = ["no server answered"]

    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        last_error[0] = str(exc) or type(exc).__name__
        if client is None:  # still connecting: the outcome says it all, in one line
            if _is_refusal(exc):
                refused.set()  # wrong or revoked credentials: retrying cannot help
            return
        log.warning("nats_error", error=last_error[0])

    async def on_disconnected() -> None:
        if client is not None and (client.is_closed or client.is_draining):
            return  # our own shutdown, not a lost server
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    async def on_closed_cb() -> None:
        if client is not None and on_closed is not None:
            on_closed(str(client.last_error or "the connection was closed"))

    extra = {} if inbox_prefix is None else {"inbox_prefix": inbox_prefix}
    connecting = asyncio.ensure_future(
        nats.connect(
            servers=servers,
            name=name,
            user_credentials=options.creds,
            tls=tls,
            connect_timeout=CONNECT_TIMEOUT_S,
            drain_timeout=DRAIN_TIMEOUT_S,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed_cb,
            **extra,
        )
    )
    refusing = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait(
            {connecting, refusing}, timeout=first_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        refusing.cancel()
        if not connecting.done():
            connecting.cancel()
        await asyncio.gather(connecting, refusing, return_exceptions=True)
    where = redacted_urls(options.urls)
    if refused.is_set():
        raise BusError(f"NATS at {where} refused our credentials: {last_error[0]}")
    if connecting.cancelled():
        raise BusError(f"cannot connect to NATS at {where} within {first_timeout_s:g}s: {last_error[0]}")
    try:
        client = connecting.result()
    except (*NatsErrors, nats.errors.NoServersError) as exc:
        raise BusError(f"cannot connect to NATS at {where}: {str(exc) or type(exc).__name__}") from exc
    return client


def _is_refusal(exc: Exception) -> bool:
    """The server refused who we say we are (a verdict that holds until the credentials change)."""
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text

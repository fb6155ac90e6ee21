"""Settings read from the environment (contract §6), in one typed place."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from daemon.rules.params import DEFAULT_MAX_BYTES
from kit.nats import NatsOptions
from kit.streams import MAX_REPLICAS
from kit.units import parse_size
from runners.protocol import ASSIGN_TIMEOUT_S, HEARTBEAT_TIMEOUT_S

DEFAULT_PORT = 8470
DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    nats_url: str | None = None
    """None: the daemon embeds a NATS server under the data dir."""
    nats: NatsOptions = dataclasses.field(default_factory=NatsOptions)
    """Credentials and TLS for NATS (its ``urls`` are ``nats_url``, or the embedded server's)."""
    nats_replicas: int | None = None
    """Copies JetStream keeps of Sluice's streams, consumer and bucket (``SLUICE_NATS_REPLICAS``).
    None (unset): they are made with one, and ones that exist keep theirs: a daemon started without
    the variable beside a cluster's must not take its copies away."""
    api_url: str = DEFAULT_API_URL
    api_token: str | None = None
    """The admin token (``SLUICE_API_TOKEN``); unset, the daemon makes one in the data dir."""
    api_hosts: frozenset[str] = frozenset()
    """``Host`` names the API answers to besides loopback's and the address it listens on."""
    api_max_body: int = 1024 * 1024
    api_max_upload: int = 512 * 1024 * 1024
    log_format: str | None = None
    dispatch: DispatchSettings = dataclasses.field(default_factory=lambda: DispatchSettings())

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] = os.environ) -> Settings:
        data_dir = environ.get("SLUICE_DATA_DIR") or "~/.local/share/sluice"
        return cls(
            data_dir=Path(data_dir).expanduser(),
            database_url=environ.get("SLUICE_DATABASE_URL") or None,
            nats_url=environ.get("SLUICE_NATS_URL") or None,
            nats=NatsOptions.from_env(environ),
            nats_replicas=_replicas(environ),
            api_url=(environ.get("SLUICE_API_URL") or DEFAULT_API_URL).rstrip("/"),
            # A token kept in a file (a Kubernetes Secret made from `openssl rand -hex 32 > FILE`)
            # ends in a newline, which no token has: the daemon must take the token the CLI sends.
            api_token=(environ.get("SLUICE_API_TOKEN") or "").strip() or None,
            api_hosts=frozenset(
                host.strip().lower()
                for host in (environ.get("SLUICE_API_HOSTS") or "").split(",")
                if host.strip()
            ),
            api_max_body=_size(environ, "SLUICE_API_MAX_BODY", 1024 * 1024),
            api_max_upload=_size(environ, "SLUICE_API_MAX_UPLOAD", 512 * 1024 * 1024),
            log_format=environ.get("SLUICE_LOG_FORMAT") or None,
            dispatch=DispatchSettings.from_env(environ),
        )

    def with_data_dir(self, data_dir: Path | None) -> Settings:
        return self if data_dir is None else dataclasses.replace(self, data_dir=data_dir.expanduser())

    @property
    def token_file(self) -> Path:
        """Where the daemon keeps the admin token it made (when ``SLUICE_API_TOKEN`` is unset)."""
        return self.data_dir / "credentials" / "api-token"

    def client_token(self) -> str | None:
        """The token the CLI sends: ``SLUICE_API_TOKEN``, else the data dir's admin token file."""
        if self.api_token:
            return self.api_token
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None


def _size(environ: Mapping[str, str], variable: str, default: int) -> int:
    """A number of bytes from ``variable`` (``1048576``, ``1Mi``, ``512Ki``).

    Raises ``ValueError`` naming the variable for anything else.
    """
    raw = environ.get(variable)
    if not raw:
        return default
    try:
        return parse_size(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a size in bytes (e.g. 1048576 or 1Mi), not {raw!r}") from None


def _replicas(environ: Mapping[str, str]) -> int | None:
    """``SLUICE_NATS_REPLICAS``: 1 to ``MAX_REPLICAS``, or None when unset or empty.

    Raises ``ValueError`` naming the variable for anything else.
    """
    raw = (environ.get("SLUICE_NATS_REPLICAS") or "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_REPLICAS):
        raise ValueError(
            f"SLUICE_NATS_REPLICAS must be a whole number from 1 to {MAX_REPLICAS} "
            f"(copies JetStream keeps of Sluice's streams), not {raw!r}"
        )
    return int(raw)


@dataclasses.dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Timings of dispatch, agent supervision and leader election; the defaults are the protocol's.

    ``unlisted_grace_s``: how long an attempt may be missing from its live agent's heartbeats before
    it is lost (covers an assignment in flight and step events not yet consumed).
    ``retry_backoff_s``: the first retry's delay, doubling per failure up to 60 s.
    ``sweep_interval_s``: the safety sweep that re-reads ready steps from the database.
    ``leader_retry_s``: how often a standby daemon tries to become the leader (and the leader checks
    that it still is).
    """

    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
    assign_timeout_s: float = ASSIGN_TIMEOUT_S
    unlisted_grace_s: float = 15.0
    retry_backoff_s: float = 1.0
    sweep_interval_s: float = 3.0
    agent_write_interval_s: float = 5.0
    leader_retry_s: float = 2.0
    params_max_bytes: int = DEFAULT_MAX_BYTES
    """The most one run parameter, and all of a run's together, may weigh as JSON: they travel in
    every assignment (``SLUICE_PARAMS_MAX_BYTES``)."""

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] = os.environ) -> DispatchSettings:
        """Reads ``SLUICE_HEARTBEAT_TIMEOUT``, ``SLUICE_ASSIGN_TIMEOUT``, ``SLUICE_UNLISTED_GRACE``,
        ``SLUICE_RETRY_BACKOFF``, ``SLUICE_SWEEP_INTERVAL`` and ``SLUICE_LEADER_RETRY`` (seconds),
        and ``SLUICE_PARAMS_MAX_BYTES``.

        Raises:
            ValueError: a value that is not a positive number, naming the variable.
        """
        names = {
            "heartbeat_timeout_s": "SLUICE_HEARTBEAT_TIMEOUT",
            "assign_timeout_s": "SLUICE_ASSIGN_TIMEOUT",
            "unlisted_grace_s": "SLUICE_UNLISTED_GRACE",
            "retry_backoff_s": "SLUICE_RETRY_BACKOFF",
            "sweep_interval_s": "SLUICE_SWEEP_INTERVAL",
            "leader_retry_s": "SLUICE_LEADER_RETRY",
        }
        values = {}
        for field, variable in names.items():
            raw = environ.get(variable)
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if not value > 0:
                raise ValueError(f"{variable} must be a positive number of seconds, not {raw!r}")
            values[field] = value
        return cls(**values, params_max_bytes=_size(environ, "SLUICE_PARAMS_MAX_BYTES", DEFAULT_MAX_BYTES))


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""Settings read from the environment (contract §6), in one typed place."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

DEFAULT_PORT = 8470
DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    nats_url: str | None = None
    nats_creds: str | None = None
    api_url: str = DEFAULT_API_URL
    api_token: str | None = None
    log_format: str | None = None

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] = os.environ) -> Settings:
        data_dir = environ.get("SLUICE_DATA_DIR") or "~/.local/share/sluice"
        return cls(
            data_dir=Path(data_dir).expanduser(),
            database_url=environ.get("SLUICE_DATABASE_URL") or None,
            nats_url=environ.get("SLUICE_NATS_URL") or None,
            nats_creds=environ.get("SLUICE_NATS_CREDS") or None,
            api_url=(environ.get("SLUICE_API_URL") or DEFAULT_API_URL).rstrip("/"),
            api_token=environ.get("SLUICE_API_TOKEN") or None,
            log_format=environ.get("SLUICE_LOG_FORMAT") or None,
        )

    def with_data_dir(self, data_dir: Path | None) -> Settings:
        return self if data_dir is None else dataclasses.replace(self, data_dir=data_dir.expanduser())


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""Parsers for the values an operator gives `sluice agent`: CPUs, GPU counts, labels, datastores and
the agent's name (sizes and the name's syntax are ``kit``'s, shared with the daemon).

Pure functions; each raises ``ValueError`` with a message fit for a user.
"""

from __future__ import annotations

import re
from typing import Literal

_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")


def parse_cpus(value: str) -> float:
    """Cores, a number above zero (fractions allowed)."""
    try:
        cores = float(value)
    except ValueError:
        cores = 0.0
    if not cores > 0 or cores == float("inf"):
        raise ValueError(f"bad cpu count {value!r} (use a number of cores above 0, e.g. 8 or 0.5)")
    return cores


def parse_gpus(value: str) -> int | Literal["auto"]:
    """``auto`` (detect through NVML) or a number of GPUs (0 or more)."""
    text = value.strip()
    if text == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    raise ValueError(f"bad GPU count {value!r} (use a number, or auto)")


def parse_labels(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``k=v,k2=v2`` items (the option may repeat) into a dict; a later key wins."""
    labels: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            key = key.strip()
            if not sep or not _LABEL_KEY.fullmatch(key):
                raise ValueError(f"bad label {item!r} (use key=value, e.g. zone=eu)")
            labels[key] = val.strip()
    return labels


def parse_datastores(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``NAME=PATH`` items into a dict of datastore name -> absolute local path."""
    datastores: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name) or not path.strip():
            raise ValueError(f"bad datastore {value!r} (use NAME=PATH, e.g. landing=/data/landing)")
        if not path.startswith("/"):
            raise ValueError(f"bad datastore {value!r}: the path must be absolute")
        datastores[name] = path.rstrip("/") or "/"
    return datastores


def agent_name(given: str | None, credentialed: str | None, hostname: str) -> str:
    """The agent's name: ``--name``, else the agent its Sluice credentials were made for, else the
    host's short name. Raises ``ValueError`` when ``--name`` and the credentials disagree (the NATS
    server would refuse every subject of that name)."""
    if given and credentialed and given != credentialed:
        raise ValueError(f"--name {given}: the credentials are agent {credentialed}'s")
    return given or credentialed or default_agent_name(hostname)


def default_agent_name(hostname: str) -> str:
    """The host's short name made fit for a subject token (``gpu01.example.com`` -> ``gpu01``)."""
    short = hostname.split(".", 1)[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", short)[:128]
    return cleaned or "agent"

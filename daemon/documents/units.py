"""Sizes, durations and CPU amounts as documents write them, and their canonical numbers.

Each parser raises ``ValueError`` with a message fit for a user.
"""

from __future__ import annotations

import re
from decimal import Decimal

from kit.units import size_in_bytes

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": 1, "m": 60, "h": 3600, "d": 86400}
_CPU = re.compile(r"(\d+(?:\.\d+)?)(m?)")


def parse_size(value: int | str) -> int:
    """Bytes from ``4Gi``, ``512Mi``, ``16G``, ``100M``, ``1k``/``1Ki`` or a plain number of bytes."""
    if isinstance(value, int):
        if value >= 0:
            return value
    elif (size := size_in_bytes(value)) is not None:
        if size == size.to_integral_value():
            return int(size)
        raise ValueError(f"bad size {value!r}: not a whole number of bytes (use e.g. 512Mi, 4Gi)")
    raise ValueError(f"bad size {value!r} (use e.g. 512Mi, 4Gi)")


def parse_duration(value: int | float | str) -> float:
    """Seconds from ``30m``, ``1h30m``, ``500ms``, ``2s``, ``1d`` or a plain number of seconds."""
    if isinstance(value, int | float):
        if value >= 0:
            return float(value)
    else:
        text = value.strip()
        parts = list(_DURATION_PART.finditer(text))
        if parts and "".join(part.group(0) for part in parts) == text:
            return float(sum(Decimal(part.group(1)) * _DURATION_UNITS[part.group(2)] for part in parts))
    raise ValueError(f"bad duration {value!r} (use e.g. 30s, 5m, 1h30m)")


def parse_cpu(value: int | float | str) -> float:
    """Cores from a number or millicores (``500m`` = 0.5); must be more than zero."""
    cores: float | None = None
    if isinstance(value, int | float):
        cores = float(value)
    else:
        match = _CPU.fullmatch(value.strip())
        if match:
            cores = float(Decimal(match.group(1)) / (1000 if match.group(2) else 1))
    if cores is None or not cores > 0:
        raise ValueError(f"bad cpu {value!r} (use a number of cores above 0, e.g. 2, 0.5 or 500m)")
    return cores

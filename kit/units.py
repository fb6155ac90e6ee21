"""Sizes as operators and documents write them (``4Gi``, ``512Mi``, ``16G``), in bytes."""

from __future__ import annotations

import re
from decimal import Decimal

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kKMGTPE]i?)?")
_SIZE_UNITS = {
    None: 1,
    **{prefix: 1000**power for power, prefix in enumerate("kMGTPE", start=1)},
    "K": 1000,
    **{f"{prefix}i": 1024**power for power, prefix in enumerate("KMGTPE", start=1)},
}


def size_in_bytes(text: str) -> Decimal | None:
    """The bytes that ``4Gi``, ``512Mi``, ``16G``, ``100M``, ``1k``/``1Ki`` or a plain number say
    (maybe a fraction of a byte), or None for text that is not a size."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or match.group(2) not in _SIZE_UNITS:
        return None
    return Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_size(value: str) -> int:
    """Bytes (> 0, a fraction dropped) from a size. Raises ``ValueError`` with a message fit for a user."""
    size = size_in_bytes(value)
    if size is not None and int(size) > 0:
        return int(size)
    raise ValueError(f"bad size {value!r} (use e.g. 512Mi, 16Gi)")

"""Field paths inside a document, as problems name them: ``steps[1].resources.gpu_memory``.

A path is relative to its document; ``""`` is the document itself. The loader records the line of
every path it builds, so a problem about any path can name the line of the deepest part that exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_LAST_PART = re.compile(r"(?:\.[^.\[\]]*|\[\d+\])$")


def child(path: str, key: str | int) -> str:
    """The path of ``key`` (a mapping key, or a list index when an int) under ``path``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parent(path: str) -> str:
    """The path one level up; the parent of a top-level key is ``""``."""
    match = _LAST_PART.search(path)
    return path[: match.start()] if match else ""


def line_for(lines: Mapping[str, int], path: str, default: int | None) -> int | None:
    """The line of ``path``, or of its deepest recorded ancestor, or ``default``."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return default
        path = parent(path)

"""Glob patterns of ``files`` triggers, matched against paths relative to the datastore root.

``*`` matches within one path segment, ``?`` one character of a segment, ``[...]`` (``[!...]`` or
``[^...]`` negated) one character of a set, and a whole ``**`` segment any number of segments,
none included. Matching is case-sensitive and, as with ``pathlib``, ``*`` also matches names that
start with a dot. Paths use ``/`` on every platform.
"""

from __future__ import annotations

import functools
import os
import re


def _segment(part: str) -> str:
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        i += 1
        if c == "*":
            while i < n and part[i] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i
            if j < n and part[j] in "!^":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
                continue
            body = part[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\")
            out.append(f"(?!/)[{'^' if negate else ''}{body}]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def translate(pattern: str) -> str:
    """The regular expression (for ``re.fullmatch``) of a glob ``pattern``."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    collapsed: list[str] = []
    for part in parts:
        if part == "**" and collapsed and collapsed[-1] == "**":
            continue
        collapsed.append(part)
    out: list[str] = []
    for i, part in enumerate(collapsed):
        last = i == len(collapsed) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_segment(part) + ("" if last else "/"))
    return "".join(out)


def literal_prefix(pattern: str) -> str:
    """The directories that every path ``pattern`` matches starts with, up to its first segment with
    a wildcard, with a trailing ``/`` ("" when there are none): where a listing of a bucket for it
    may start."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    fixed: list[str] = []
    for part in parts[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed) + "/" if fixed else ""


@functools.lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The compiled matcher of a glob ``pattern`` (use ``.fullmatch``)."""
    return re.compile(translate(pattern), re.DOTALL)


def relative(root: str, path: str) -> str | None:
    """``path`` relative to ``root`` with ``/`` separators, or None when it is not below ``root``."""
    rel = os.path.relpath(path, root)
    if rel == "." or rel == ".." or rel.startswith(".." + os.sep):
        return None
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


class Matcher:
    """Which paths below one root a pattern selects."""

    __slots__ = ("_regex", "pattern", "root")

    def __init__(self, root: str, pattern: str) -> None:
        self.root = root
        self.pattern = pattern
        self._regex = compile_glob(pattern)

    def matches(self, rel: str) -> bool:
        return self._regex.fullmatch(rel) is not None

    def match_abs(self, path: str) -> str | None:
        """The relative path of ``path`` when it is below the root and matches, else None."""
        rel = relative(self.root, path)
        return rel if rel is not None and self.matches(rel) else None

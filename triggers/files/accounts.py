"""What a files trigger has accounted for: ``seen``, each path's signature as last delivered (or
settled into a kind nobody asked for), which is the trigger's saved state; and the items on their way
to the sink, so that a file seen again while its event is in delivery is no news.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from triggers.files.matching import Matcher
from triggers.files.settle import AnySignature, ObjectSignature, Settled, Signature


def load_seen(state: Mapping[str, Any], matcher: Matcher) -> dict[str, Signature]:
    """The ``seen`` record of a saved state, without paths the (maybe changed) pattern no longer selects."""
    seen: dict[str, Signature] = {}
    raw = state.get("seen")
    if not isinstance(raw, dict):
        return seen
    for path, value in raw.items():
        ok = isinstance(value, list | tuple) and len(value) == 2
        if ok and isinstance(path, str) and matcher.matches(path):
            with contextlib.suppress(TypeError, ValueError):
                seen[path] = Signature(int(value[0]), int(value[1]))
    return seen


def dump_seen(seen: Mapping[str, Signature]) -> dict[str, Any]:
    return {"seen": {path: [sig.mtime_ns, sig.size] for path, sig in seen.items()}}


class Accounts:
    """``seen`` and the items in delivery; ``dirty`` is set, and ``changes`` counts up, whenever
    ``seen`` changed and wants saving."""

    def __init__(self, seen: dict[str, AnySignature]) -> None:
        self.seen = seen
        self._inflight: dict[str, tuple[int, AnySignature | None]] = {}
        self.changes = 0
        self.dirty = asyncio.Event()

    def known(self, path: str) -> AnySignature | None:
        """What this trigger last accounted for (or is delivering) of ``path``."""
        if (inflight := self._inflight.get(path)) is not None:
            return inflight[1]
        return self.seen.get(path)

    def delivering(self, items: Iterable[Settled]) -> None:
        """``items`` are on their way to the sink."""
        for item in items:
            count = self._inflight.get(item.path, (0, None))[0]
            self._inflight[item.path] = (count + 1, item.sig)

    def account(self, items: Iterable[Settled], *, delivered: bool = False) -> None:
        """Record ``items`` as seen (deleted ones leave the record) and schedule a save."""
        for item in items:
            if delivered:
                count, latest = self._inflight[item.path]
                if count > 1:
                    self._inflight[item.path] = (count - 1, latest)
                else:
                    del self._inflight[item.path]
            if item.sig is None:
                self.seen.pop(item.path, None)
            else:
                self.seen[item.path] = item.sig
            if item.moved_from is not None:
                self.seen.pop(item.moved_from, None)
        self.changes += 1
        self.dirty.set()

    def forget_deliveries(self) -> None:
        """The deliveries were dropped (the trigger restarts); ``seen`` still holds what was delivered."""
        self._inflight.clear()


def load_objects(state: Mapping[str, Any], matcher: Matcher) -> dict[str, AnySignature]:
    """The ``objects`` record (key -> ETag and size) of a bucket trigger's saved state, without keys
    the (maybe changed) pattern no longer selects."""
    seen: dict[str, AnySignature] = {}
    raw = state.get("objects")
    if not isinstance(raw, dict):
        return seen
    for key, value in raw.items():
        ok = isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str)
        if ok and isinstance(key, str) and matcher.matches(key):
            with contextlib.suppress(TypeError, ValueError):
                seen[key] = ObjectSignature(value[0], int(value[1]))
    return seen


def dump_objects(seen: Mapping[str, AnySignature]) -> dict[str, Any]:
    return {"objects": {key: [sig.token, sig.size] for key, sig in seen.items()}}

"""The bounds of what Sluice stores in PostgreSQL: numbers (``integer``, ``bigint``) and text (no NUL,
no lone surrogate), so that input beyond them is refused, or cleaned, at the edge, never failing in
the database."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
Positive32 = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
"""A version or attempt number in a JSON body."""


def storable(value: Any) -> tuple[Any, bool]:
    """``value`` (JSON-like) with the text PostgreSQL cannot store replaced — NUL characters, and
    lone surrogates that JSON's ``\\ud800`` escapes let through — and whether there was any."""
    if isinstance(value, str):
        clean = value.replace("\0", "\ufffd").encode("utf-8", "replace").decode("utf-8")
        return clean, clean != value
    if isinstance(value, dict):
        clean_dict, changed = {}, False
        for key, item in value.items():
            (key, key_changed), (item, item_changed) = storable(key), storable(item)
            clean_dict[key] = item
            changed = changed or key_changed or item_changed
        return clean_dict, changed
    if isinstance(value, list):
        items = [storable(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    return value, False

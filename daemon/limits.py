"""The bounds of the numbers Sluice stores (PostgreSQL ``integer`` and ``bigint``), so that input
beyond them is refused as bad input at the edge, never failing in the database."""

from __future__ import annotations

from typing import Annotated

import msgspec

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
Positive32 = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
"""A version or attempt number in a JSON body."""

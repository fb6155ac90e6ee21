"""The one bounded exponential backoff that every retry and restart in Sluice waits by."""

from __future__ import annotations


def backoff_s(attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait after failure number ``attempt`` (1 for the first): ``base``, doubling with
    each failure, never more than ``cap``. No jitter: retries of one thing are not synchronised."""
    return min(cap, base * 2 ** max(0, min(attempt - 1, 30)))


class Backoff:
    """The delays of one retrying loop: :meth:`next` after each failure, :meth:`reset` once it works."""

    __slots__ = ("base", "cap", "failures")

    def __init__(self, base: float, cap: float) -> None:
        self.base, self.cap = base, cap
        self.failures = 0

    def next(self) -> float:
        """The wait after one more failure."""
        self.failures += 1
        return backoff_s(self.failures, base=self.base, cap=self.cap)

    def reset(self) -> None:
        self.failures = 0

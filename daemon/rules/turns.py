"""Whose turn it is at free capacity: the order in which a dispatch pass looks at ready steps.

Runs take turns: one step of each run, then the next step of each, and so on, so that a run with many
ready steps cannot keep every free slot from the others. The turn order lasts across passes: a run
whose step was placed goes to the back, a run newly ready joins at the back (the oldest-ready run goes
first), and a run with nothing ready leaves it. Each run's own steps keep their order. When one slot
frees at a time, a run's ready step is placed after at most one step of each run ahead of it.
Ordering N items costs O(N).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def round_robin(queues: Iterable[Sequence[T]]) -> list[T]:
    """The first item of each queue in turn, then the second of each, and so on:
    ``[[a1, a2, a3], [b1], [c1, c2]]`` → ``[a1, b1, c1, a2, c2, a3]``."""
    order: list[T] = []
    live = [queue for queue in queues if queue]
    depth = 0
    while len(live) > 1:
        order.extend(queue[depth] for queue in live)
        depth += 1
        live = [queue for queue in live if len(queue) > depth]
    if live:
        order.extend(live[0][depth:])
    return order


class Turns(Generic[K]):
    """The turn order of owners (runs, by key) across passes."""

    def __init__(self) -> None:
        self._queue: dict[K, None] = {}

    def order(self, items: Iterable[T], owner: Callable[[T], K]) -> list[T]:
        """``items`` interleaved by owner (:func:`round_robin`), each owner's items in the order
        given: owners in turn order, those new to it behind, in the order of their first item. The
        turn order forgets owners with no item."""
        by_owner: dict[K, list[T]] = {}
        for item in items:
            key = owner(item)
            if (group := by_owner.get(key)) is None:
                by_owner[key] = [item]
            else:
                group.append(item)
        queue = {key: None for key in self._queue if key in by_owner}
        queue.update(dict.fromkeys(by_owner))  # newcomers at the back; the others keep their place
        self._queue = queue
        return round_robin([by_owner[key] for key in queue])

    def served(self, owners: Iterable[K]) -> None:
        """Owners whose items were placed, in the order placed: each goes to the back."""
        for key in owners:
            self._queue.pop(key, None)
            self._queue[key] = None

    def __iter__(self) -> Iterator[K]:
        """Owners in turn order."""
        return iter(self._queue)

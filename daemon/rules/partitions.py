"""How a ``foreach`` step fans out, and how its partitions add up (decisions, no I/O).

A step with ``foreach`` runs once per partition: over N shards, over the items of a list parameter,
or over the files under a datastore input, up to ``per`` files a partition. Each partition is a
step run of its own, named ``step[index]``.

File partitions are *sticky*, so that reuse works partition by partition: a file stays in the
partition it was in at the pipeline's previous run of the step (matched by index), a partition whose
files all went is dropped, and new files first fill the room that removed files left in partitions
that change anyway, then go, in name order, into new partitions of up to ``per``. Adding, changing or
removing k files therefore changes at most k partitions; the others keep their files, so their
fingerprints, and they are reused. The first run (or a run whose ``per`` changed) cuts the sorted
files into consecutive partitions of ``per``.

A step's partitions add up to one outcome once all are final: it fails when more of them failed than
``allowed_failures`` tolerates (a count, or a percentage of the partitions, rounded down), is
cancelled when one was cancelled, and succeeds otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FINAL_PARTITION = frozenset({"succeeded", "reused", "failed", "skipped", "cancelled"})


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of a step: its index, and what its templates see as ``${item}``: the shard
    index, the list item, or its files (paths relative to the input)."""

    index: int
    item: Any = None
    files: tuple[str, ...] = ()


def item_of(partition: Partition) -> Any:
    """What a partition's step run records as its ``item``: ``{"files": [...]}``, or the item."""
    return {"files": list(partition.files)} if partition.files else partition.item


def partition_from_item(index: int, item: Any) -> Partition:
    """The partition a step run recorded (:func:`item_of`)."""
    if isinstance(item, dict) and "files" in item:
        return Partition(index, files=tuple(item["files"]))
    return Partition(index, item=item)


def name_of(step: str, index: int) -> str:
    """The step run name of a partition: ``score[3]``."""
    return f"{step}[{index}]"


def step_of(run_name: str) -> str:
    """The step a step run belongs to: ``score`` for the partition ``score[3]`` and for ``score``
    itself (step names hold no brackets)."""
    return run_name.partition("[")[0]


def partitions_of(
    steps: Sequence[tuple[str, str | None]], fanning: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Step -> its partitions' run names, from a run's step runs (run name, step it partitions);
    ``fanning``: the steps that fan out, listed even with no partition."""
    found: dict[str, list[str]] = {step: [] for step in fanning}
    for name, partition_of in steps:
        if partition_of is not None:
            found.setdefault(partition_of, []).append(name)
    return found


def shards(count: int) -> list[Partition]:
    return [Partition(index, item=index) for index in range(count)]


def items(values: Sequence[Any]) -> list[Partition]:
    return [Partition(index, item=value) for index, value in enumerate(values)]


def files(
    names: Sequence[str], per: int, previous: Mapping[int, Sequence[str]] | None = None
) -> list[Partition]:
    """Partitions of ``names`` (paths relative to the input), up to ``per`` each, sticky to
    ``previous`` (index -> files at the pipeline's previous run of the step), in index order."""
    if per < 1:
        raise ValueError(f"per must be at least 1, not {per}")
    current = sorted(set(names))
    if not previous or any(len(kept) > per for kept in previous.values()):
        return _consecutive(current, per, start=0)
    present = set(current)
    placed: set[str] = set()
    kept: dict[int, list[str]] = {}
    changed: list[int] = []
    for index in sorted(previous):
        was = previous[index]
        still = [name for name in was if name in present and name not in placed]
        placed.update(still)
        if not still:
            continue
        kept[index] = still
        if len(still) < len(was):
            changed.append(index)
    arrivals = [name for name in current if name not in placed]
    for index in changed:  # they run again anyway: their room costs nothing
        room = per - len(kept[index])
        kept[index].extend(arrivals[:room])
        arrivals = arrivals[room:]
    start = max(previous) + 1
    partitions = [Partition(index, files=tuple(sorted(names))) for index, names in sorted(kept.items())]
    return partitions + _consecutive(arrivals, per, start=start)


def _consecutive(names: Sequence[str], per: int, *, start: int) -> list[Partition]:
    return [
        Partition(start + offset, files=tuple(names[position : position + per]))
        for offset, position in enumerate(range(0, len(names), per))
    ]


def tolerated(allowed: int | str, total: int) -> int:
    """How many failed partitions of ``total`` the step tolerates: ``allowed`` is a count, or a
    percentage such as ``"10%"`` (of ``total``, rounded down)."""
    if isinstance(allowed, str):
        return math.floor(total * float(allowed.rstrip("%")) / 100)
    return allowed


def fan_in(statuses: Sequence[str], allowed: int | str) -> str | None:
    """The step's outcome from its partitions' statuses, or None while one is not final."""
    if any(status not in FINAL_PARTITION for status in statuses):
        return None
    if "cancelled" in statuses:
        return "cancelled"
    failed = sum(status in ("failed", "skipped") for status in statuses)
    return "failed" if failed > tolerated(allowed, len(statuses)) else "succeeded"


def tolerated_failures(statuses: Mapping[str, str], allowed: int | str) -> str | None:
    """Why a step whose partitions (run name -> status) all ended succeeded all the same, or None."""
    failed = [name for name, status in statuses.items() if status in ("failed", "skipped")]
    if not failed:
        return None
    shown = ", ".join(failed[:10]) + (", …" if len(failed) > 10 else "")
    return f"{len(failed)} of {len(statuses)} partitions failed (allowed_failures {allowed}): {shown}"


def gathered(
    statuses: Mapping[str, str], partitions: Mapping[str, Sequence[str]], allowed: Mapping[str, int | str]
) -> dict[str, str]:
    """The statuses of the steps that fan out, as their partitions make them (step -> status; only
    those that change): ``running`` once a partition is under way, then :func:`fan_in`'s outcome
    once all are final. ``partitions``: step -> its partitions' run names; ``allowed``: step -> its
    ``allowed_failures``."""
    changes = {}
    for step, names in partitions.items():
        if not names or statuses[step] not in ("pending", "ready", "running"):
            continue
        outcome = fan_in([statuses[name] for name in names], allowed.get(step, 0))
        if outcome is None and any(statuses[name] not in ("pending", "reused") for name in names):
            outcome = "running"  # reused partitions alone do not start a step still waiting upstream
        if outcome is not None and outcome != statuses[step]:
            changes[step] = outcome
    return changes


def spread(
    changes: Mapping[str, str], statuses: Mapping[str, str], partitions: Mapping[str, Sequence[str]]
) -> dict[str, str]:
    """``changes`` the state machine made to steps, spread to the partitions of those that fan out:
    a step made ready runs as its partitions (ready; the step itself ``running``, never dispatched;
    with no partition at all, nothing to do: it succeeds), and a step skipped or cancelled takes its
    partitions that had not started with it."""
    spread_changes = dict(changes)
    for step, status in changes.items():
        names = partitions.get(step)
        if names is None:
            continue
        if status == "ready":
            spread_changes[step] = "running" if names else "succeeded"
            spread_changes.update((name, "ready") for name in names if statuses[name] == "pending")
        elif status in ("skipped", "cancelled"):
            spread_changes.update((name, status) for name in names if statuses[name] in ("pending", "ready"))
    return spread_changes

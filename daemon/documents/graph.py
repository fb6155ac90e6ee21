"""The step graph of a pipeline: which steps each step waits for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from daemon.documents.specs import FromStep, StepSpec
from daemon.documents.template import TemplateError, references


def step_references(text: str) -> list[tuple[str, str]]:
    """(step, output) of each well-formed ``${steps.S.outputs.O}`` in ``text``; malformed text has none."""
    try:
        expressions = references(text)
    except TemplateError:
        return []
    found = []
    for expression in expressions:
        parts = expression.split(".")
        if len(parts) == 4 and parts[0] == "steps" and parts[2] == "outputs":
            found.append((parts[1], parts[3]))
    return found


def dependencies(steps: Sequence[StepSpec]) -> dict[str, list[str]]:
    """For each step (in order), the other known steps it waits for, each once, in order of mention.

    Edges come from step inputs, ``${steps.S.outputs.O}`` in command items and env values, and
    ``after``. Names of unknown steps and of the step itself are left out (validation reports them).
    """
    known = {step.name for step in steps}
    graph: dict[str, list[str]] = {}
    for step in steps:
        texts = [*step.command, *step.env.values()]
        mentioned = [
            *(source.step for source in step.inputs.values() if isinstance(source, FromStep)),
            *(name for text in texts for name, _ in step_references(text)),
            *step.after,
        ]
        graph[step.name] = _unique(name for name in mentioned if name in known and name != step.name)
    return graph


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle of ``graph`` (node -> nodes it waits for) as the nodes in the order they would run,
    from the one listed first in ``graph``, and that node again at the end (``[a, b, c, a]``: b waits
    for a, c for b, a for c); None if there is none.
    """
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        trail = [start]  # the current path of waits, start first
        pending = [iter(graph[start])]
        while pending:
            node = next(pending[-1], None)
            if node is None:
                done.add(trail.pop())
                pending.pop()
            elif node in trail:
                return _run_order(trail[trail.index(node) :], list(graph))
            elif node not in done:
                trail.append(node)
                pending.append(iter(graph[node]))
    return None


def _run_order(waits: list[str], order: list[str]) -> list[str]:
    """A cycle given in wait order, in run order from the node earliest in ``order``, closed."""
    cycle = waits[::-1]
    first = min(range(len(cycle)), key=lambda index: order.index(cycle[index]))
    cycle = cycle[first:] + cycle[:first]
    return [*cycle, cycle[0]]


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))

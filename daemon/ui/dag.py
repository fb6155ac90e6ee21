"""A run's DAG as the run page draws it: a pure layered layout (``layout``) and its SVG (``svg``).

The layout is Sugiyama's, in four steps: break cycles, put each step in the layer of its longest path
from the sources, order each layer by barycenter sweeps to reduce crossings, then place the boxes.
Layers run left to right (time flows right; a screen is wider than tall). An edge spanning several
layers passes through each layer between it as a thin virtual slot, so it never runs through a box.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from markupsafe import Markup, escape

from daemon.ui.views import STATUS_SYMBOLS as SYMBOLS

NODE_WIDTH = 168.0
NODE_HEIGHT = 58.0  # three lines: name, status, detail
LAYER_GAP = 56.0
ROW_GAP = 14.0
# A long edge crossing a layer takes a slot this tall, so that parallel edges keep apart without
# making the layer as tall as if each were a box.
VIRTUAL_HEIGHT = 2.0
MARGIN = 16.0
SWEEPS = 4

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Edge:
    """``target`` reads ``source``'s output (``data``), or only starts after it (``after``)."""

    source: str
    target: str
    kind: Literal["data", "after"]


@dataclass(frozen=True, slots=True)
class Placement:
    """A step's box: its top-left corner and size."""

    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Route:
    """The polyline an edge is drawn along, from its source's box to its target's."""

    edge: Edge
    points: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each step's box and each edge go; ``width`` × ``height`` bounds them all."""

    nodes: Mapping[str, Placement]
    routes: tuple[Route, ...]
    width: float
    height: float


def layout(names: Sequence[str], edges: Iterable[Edge]) -> Layout:
    """The layered layout of the steps ``names`` and the ``edges`` between them; pure and deterministic.

    Ties keep the order of ``names`` (a repeated name counts once). Edges naming an unknown step, and
    edges from a step to itself, are left out; a cycle (validation rejects them, but a drawing must
    not hang on one) is broken by drawing the edges that close it backwards, right to left.
    """
    order = list(dict.fromkeys(names))
    index = {name: i for i, name in enumerate(order)}
    drawn = list(
        dict.fromkeys(
            edge
            for edge in edges
            if edge.source in index and edge.target in index and edge.source != edge.target
        )
    )
    pairs = list(dict.fromkeys((index[edge.source], index[edge.target]) for edge in drawn))
    backwards, topological = _break_cycles(len(order), pairs)
    forward = list(dict.fromkeys((t, s) if (s, t) in backwards else (s, t) for s, t in pairs))

    layer_of = [0] * len(order)
    successors: list[list[int]] = [[] for _ in order]
    for source, target in forward:
        successors[source].append(target)
    for node in topological:
        for target in successors[node]:
            layer_of[target] = max(layer_of[target], layer_of[node] + 1)

    # Nodes from len(order) on are virtual: one per layer that a long edge crosses. The long edges of
    # one step share them, as a bus that each leaves at its target's layer: fewer nodes to order and
    # place, and fewer lines on the page.
    up: list[list[int]] = [[] for _ in order]
    down: list[list[int]] = [[] for _ in order]
    bus: dict[tuple[int, int], int] = {}
    chains: dict[tuple[int, int], list[int]] = {}
    for source, target in forward:
        chain = [source]
        for layer in range(layer_of[source] + 1, layer_of[target]):
            virtual = bus.get((source, layer))
            if virtual is None:
                virtual = bus[source, layer] = len(layer_of)
                layer_of.append(layer)
                up.append([chain[-1]])
                down.append([])
                down[chain[-1]].append(virtual)
            chain.append(virtual)
        down[chain[-1]].append(target)
        up[target].append(chain[-1])
        chain.append(target)
        chains[source, target] = chain

    layers: list[list[int]] = [[] for _ in range(max(layer_of, default=-1) + 1)]
    for node, layer in enumerate(layer_of):
        layers[layer].append(node)
    layers = _reduce_crossings(layers, up, down)

    size = [NODE_HEIGHT if node < len(order) else VIRTUAL_HEIGHT for node in range(len(layer_of))]
    top = _place(layers, up, down, size)
    shift = MARGIN - min(top, default=0.0)
    left = [MARGIN + layer * (NODE_WIDTH + LAYER_GAP) for layer in range(len(layers))]

    def middle(node: int) -> float:
        return top[node] + shift + size[node] / 2

    routes = []
    for edge in drawn:
        pair = index[edge.source], index[edge.target]
        reverse = pair in backwards
        chain = chains[pair[::-1] if reverse else pair]
        first, *between, last = chain
        points = [(left[layer_of[first]] + NODE_WIDTH, middle(first))]
        for node in between:
            points += [
                (left[layer_of[node]], middle(node)),
                (left[layer_of[node]] + NODE_WIDTH, middle(node)),
            ]
        points.append((left[layer_of[last]], middle(last)))
        routes.append(Route(edge, tuple(reversed(points) if reverse else points)))

    nodes = {
        name: Placement(left[layer_of[i]], top[i] + shift, NODE_WIDTH, NODE_HEIGHT)
        for i, name in enumerate(order)
    }
    bottom = max((top[node] + shift + size[node] for node in range(len(layer_of))), default=0.0)
    width = 2 * MARGIN + len(layers) * NODE_WIDTH + max(len(layers) - 1, 0) * LAYER_GAP
    return Layout(nodes, tuple(routes), width, bottom + MARGIN if layers else 2 * MARGIN)


def _break_cycles(count: int, pairs: list[tuple[int, int]]) -> tuple[set[tuple[int, int]], list[int]]:
    """The edges closing a cycle (found by depth-first search from each node in order) and a
    topological order of the graph once those are reversed."""
    successors: list[list[int]] = [[] for _ in range(count)]
    for source, target in pairs:
        successors[source].append(target)
    new, open_, done = 0, 1, 2
    state = [new] * count
    backwards: set[tuple[int, int]] = set()
    finished: list[int] = []
    for root in range(count):
        if state[root] != new:
            continue
        state[root] = open_
        # Iterative: a 10,000-step chain must not reach Python's recursion limit.
        stack = [(root, iter(successors[root]))]
        while stack:
            node, pending = stack[-1]
            for target in pending:
                if state[target] == new:
                    state[target] = open_
                    stack.append((target, iter(successors[target])))
                    break
                if state[target] == open_:
                    backwards.add((node, target))
            else:
                stack.pop()
                state[node] = done
                finished.append(node)
    return backwards, finished[::-1]


def _reduce_crossings(layers: list[list[int]], up: list[list[int]], down: list[list[int]]) -> list[list[int]]:
    """``layers`` reordered by barycenter sweeps, down then up, while a sweep removes crossings; the
    best order seen, so never worse than the one given."""
    position = [0] * len(up)
    for layer in layers:
        for i, node in enumerate(layer):
            position[node] = i
    best, fewest = layers, _crossings(layers, down, position)
    current = [list(layer) for layer in layers]
    for _ in range(SWEEPS):
        if fewest == 0:
            break
        for i in range(1, len(current)):
            current[i] = _by_barycenter(current[i], len(current[i - 1]), up, position)
        for i in range(len(current) - 2, -1, -1):
            current[i] = _by_barycenter(current[i], len(current[i + 1]), down, position)
        crossings = _crossings(current, down, position)
        if crossings >= fewest:
            break
        best, fewest = [list(layer) for layer in current], crossings
    return best


def _by_barycenter(
    layer: list[int], fixed_count: int, neighbours: list[list[int]], position: list[int]
) -> list[int]:
    """``layer`` sorted by the mean position of each node's neighbours in the fixed layer beside it;
    ties keep their order. ``position`` follows."""
    keys = []
    for i, node in enumerate(layer):
        near = neighbours[node]
        if len(near) == 1:
            key = float(position[near[0]])
        elif near:
            key = sum(map(position.__getitem__, near)) / len(near)
        else:
            # No neighbours on that side: keep its relative place rather than jump to the top.
            key = i * fixed_count / len(layer)
        keys.append((key, i, node))
    keys.sort()
    ordered = [node for _, _, node in keys]
    for i, node in enumerate(ordered):
        position[node] = i
    return ordered


def _crossings(layers: list[list[int]], down: list[list[int]], position: list[int]) -> int:
    """How many pairs of edges cross between adjacent layers: inversions of their lower ends, taken in
    the order of their upper ends."""
    total = 0
    for upper in layers[:-1]:
        seen: list[int] = []
        for _, end in sorted([(position[node], position[target]) for node in upper for target in down[node]]):
            total += len(seen) - bisect.bisect_right(seen, end)
            bisect.insort(seen, end)
    return total


def _place(
    layers: list[list[int]], up: list[list[int]], down: list[list[int]], size: list[float]
) -> list[float]:
    """Each node's top: as close as the order and gaps allow to the middle of its neighbours in the
    layer before (sweeping down) or after (sweeping up), so chains come out straight."""
    top = [0.0] * len(size)
    for layer in layers:
        y = 0.0
        for node in layer:
            top[node] = y
            y += size[node] + ROW_GAP
    forward, backward = range(1, len(layers)), range(len(layers) - 2, -1, -1)
    for sweep, neighbours in ((forward, up), (backward, down), (forward, up)):
        for i in sweep:
            wanted = []
            for node in layers[i]:
                near = neighbours[node]
                middle = sum(top[m] + size[m] / 2 for m in near) / len(near) if near else None
                wanted.append(top[node] if middle is None else middle - size[node] / 2)
            for node, y in zip(layers[i], _pack(wanted, [size[node] for node in layers[i]]), strict=True):
                top[node] = y
    return top


def _pack(wanted: list[float], sizes: list[float]) -> list[float]:
    """Tops nearest ``wanted`` (least squares) that keep their order with a gap between boxes.

    With ``offset[i]`` the room the boxes before ``i`` take, ``top[i] - offset[i]`` must not decrease:
    an isotonic regression, solved by pooling adjacent blocks that violate it.
    """
    offsets = list(itertools.accumulate((size + ROW_GAP for size in sizes[:-1]), initial=0.0))
    blocks: list[list[float]] = []  # [sum, count] of pooled values
    for want, offset in zip(wanted, offsets, strict=True):
        blocks.append([want - offset, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    pooled = [total / count for total, count in blocks for _ in range(int(count))]
    return [value + offset for value, offset in zip(pooled, offsets, strict=True)]


@dataclass(frozen=True, slots=True)
class Box:
    """What a step's box says: its status, its name, and a short second line ("3/10 succeeded")."""

    status: str
    label: str
    detail: str = ""


# Status is never told by colour alone: each has a word and a symbol.
NAME_CHARS = 20
DETAIL_CHARS = 24
PADDING = 10.0

_DEFS = Markup(
    '<defs><marker id="sluice-dag-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="8"'
    ' markerHeight="8" orient="auto-start-reverse"><path class="edge-arrow" d="M0,0 L8,4 L0,8 z"/>'
    "</marker></defs>"
)


def svg(layout: Layout, boxes: Mapping[str, Box], href: Callable[[str], str] | None = None) -> Markup:
    """``layout`` drawn as an inline SVG; every text in it escaped.

    Colours come from the page's stylesheet through classes: ``step status-<status>`` on each step's
    group (``rect``, ``text.step-name``, ``text.step-status``, ``text.step-detail``), ``edge edge-data``
    and ``edge edge-after`` on edges (drawn first, under the boxes), ``edge-arrow`` on arrowheads,
    ``step-link`` on the links ``href(name)`` gives (style their ``:focus-visible`` outline). A step
    missing from ``boxes`` is drawn as pending.
    """
    shown = {name: boxes.get(name) or Box("pending", name) for name in layout.nodes}
    counts = Counter(box.status for box in shown.values())
    ordered = [status for status in SYMBOLS if status in counts] + sorted(counts.keys() - SYMBOLS.keys())
    summary = f"DAG of {len(shown)} step{'' if len(shown) == 1 else 's'}" + (
        ": " + ", ".join(f"{counts[status]} {status}" for status in ordered) if ordered else ""
    )
    # role="img" hides what is inside from assistive technology; with links inside, they must stay
    # reachable, so the drawing is a labelled group instead.
    role = "img" if href is None else "group"
    width, height = _number(layout.width), _number(layout.height)
    # Plain strings with every text through escape(): Markup.format escapes the same way but costs
    # several times more, and a 200-step DAG makes thousands of these (the run page's budget).
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" role="{role}" aria-label="{escape(summary)}"'
        f' viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        _DEFS,
        '<g class="edges">',
    ]
    for route in layout.routes:
        path = " ".join(
            f"{'L' if i else 'M'}{_number(x)},{_number(y)}" for i, (x, y) in enumerate(route.points)
        )
        kind = escape(route.edge.kind)
        parts.append(f'<path class="edge edge-{kind}" d="{path}" marker-end="url(#sluice-dag-arrow)"/>')
    parts.append('</g><g class="steps">')
    for name, place in layout.nodes.items():
        parts.append(_step(name, place, shown[name], href))
    parts.append("</g></svg>")
    return Markup("".join(parts))


def _step(name: str, place: Placement, box: Box, href: Callable[[str], str] | None) -> str:
    status = f"{SYMBOLS.get(box.status, '•')} {box.status}"
    text_x = _number(place.x + PADDING)
    lines = [
        f'<text class="step-name" x="{text_x}" y="{_number(place.y + 19)}">'
        f"{escape(_truncate(box.label, NAME_CHARS))}</text>",
        f'<text class="step-status" x="{text_x}" y="{_number(place.y + 35)}">{escape(status)}</text>',
    ]
    if box.detail:
        lines.append(
            f'<text class="step-detail" x="{text_x}" y="{_number(place.y + 50)}">'
            f"{escape(_truncate(box.detail, DETAIL_CHARS))}</text>"
        )
    tooltip = escape("\n".join(filter(None, [box.label, status, box.detail])))
    group = (
        f'<g class="step status-{escape(box.status)}" data-step="{escape(name)}"'
        f' data-status="{escape(box.status)}"><title>{tooltip}</title>'
        f'<rect x="{_number(place.x)}" y="{_number(place.y)}" width="{_number(place.width)}"'
        f' height="{_number(place.height)}" rx="6"/>{"".join(lines)}</g>'
    )
    if href is None:
        return group
    return f'<a href="{escape(href(name))}" class="step-link">{group}</a>'


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")

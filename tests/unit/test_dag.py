"""The run page's DAG: the layered layout (layers, order, room for every box) and its SVG."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from markupsafe import Markup

from daemon.ui.dag import Box, Edge, Layout, Placement, layout, svg

SVG = "{http://www.w3.org/2000/svg}"


def data(*pairs: str) -> list[Edge]:
    """Edges written as "a>b"."""
    return [Edge(*pair.split(">"), "data") for pair in pairs]


def columns(drawn: Layout) -> list[list[str]]:
    """The steps of each layer, left to right, each layer top to bottom."""
    xs = sorted({place.x for place in drawn.nodes.values()})
    return [
        sorted((name for name, place in drawn.nodes.items() if place.x == x), key=lambda n: drawn.nodes[n].y)
        for x in xs
    ]


def overlap(a: Placement, b: Placement) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


def crossings(drawn: Layout, edges: list[Edge]) -> int:
    """Pairs of edges between the same two layers whose ends swap places."""
    nodes = drawn.nodes
    count = 0
    for one, two in itertools.combinations(edges, 2):
        if nodes[one.source].x == nodes[two.source].x and nodes[one.target].x == nodes[two.target].x:
            above = nodes[one.source].y - nodes[two.source].y
            below = nodes[one.target].y - nodes[two.target].y
            count += above * below < 0
    return count


def random_dag(count: int, seed: int) -> tuple[list[str], list[Edge]]:
    """Up to three inputs per step from earlier steps, with names listed in a shuffled order."""
    rng = random.Random(seed)
    steps = [f"s{i}" for i in range(count)]
    edges = [
        Edge(source, target, rng.choice(["data", "after"]))
        for i, target in enumerate(steps)
        for source in rng.sample(steps[:i], min(i, rng.randint(0, 3)))
    ]
    names = list(steps)
    rng.shuffle(names)
    return names, edges


# Layers


def test_a_chain_takes_three_layers_left_to_right() -> None:
    drawn = layout(["a", "b", "c"], data("a>b", "b>c"))

    assert columns(drawn) == [["a"], ["b"], ["c"]]
    assert drawn.width > drawn.height


def test_a_diamond_puts_its_join_in_the_last_layer() -> None:
    drawn = layout(["join", "left", "right", "top"], data("top>left", "top>right", "left>join", "right>join"))

    assert columns(drawn) == [["top"], ["left", "right"], ["join"]]


def test_a_long_edge_routes_through_virtual_points_beside_the_boxes() -> None:
    drawn = layout(["a", "b", "c"], data("a>b", "b>c", "a>c"))

    (long,) = [route for route in drawn.routes if route.edge == Edge("a", "c", "data")]
    assert len(long.points) > 2
    b = drawn.nodes["b"]
    between = [(x, y) for x, y in long.points if b.x <= x <= b.x + b.width]
    assert between, long.points
    assert all(not b.y <= y <= b.y + b.height for _, y in between)


def test_routes_run_from_the_source_box_to_the_target_box() -> None:
    drawn = layout(["a", "b"], [Edge("a", "b", "after")])

    (route,) = drawn.routes
    a, b = drawn.nodes["a"], drawn.nodes["b"]
    assert route.edge.kind == "after"
    assert route.points[0] == (a.x + a.width, a.y + a.height / 2)
    assert route.points[-1] == (b.x, b.y + b.height / 2)


# Order and room


def test_ties_keep_the_order_of_names() -> None:
    drawn = layout(["source", "z", "y", "x", "alone"], data("source>z", "source>y", "source>x"))

    assert columns(drawn) == [["source", "alone"], ["z", "y", "x"]]


@pytest.mark.parametrize(
    ("edges", "at_most"),
    [
        (data("a>x", "b>y", "c>z", "d>w"), 0),
        (data("a>x", "b>y", "c>z", "d>w", "a>w", "b>z"), 2),
    ],
)
def test_barycenter_sweeps_reduce_the_crossings_of_the_given_order(edges: list[Edge], at_most: int) -> None:
    names = ["a", "b", "c", "d", "w", "x", "y", "z"]
    given = Layout(
        {name: Placement(x=0 if name < "e" else 1, y=i, width=1, height=1) for i, name in enumerate(names)},
        (),
        2,
        len(names),
    )

    assert crossings(layout(names, edges), edges) < crossings(given, edges)
    assert crossings(layout(names, edges), edges) <= at_most


def test_no_two_boxes_overlap_in_a_random_dag_of_200_steps() -> None:
    names, edges = random_dag(200, seed=20240607)
    drawn = layout(names, edges)

    assert len(drawn.nodes) == 200
    for (one, a), (two, b) in itertools.combinations(drawn.nodes.items(), 2):
        assert not overlap(a, b), (one, two)
    for place in drawn.nodes.values():
        assert min(place.x, place.y) >= 0
        assert place.x + place.width <= drawn.width
        assert place.y + place.height <= drawn.height
    for route in drawn.routes:
        assert all(0 <= x <= drawn.width and 0 <= y <= drawn.height for x, y in route.points)
        assert route.points[0][0] < route.points[-1][0], route.edge
    assert len(drawn.routes) == len(set(edges))


def test_the_layout_is_the_same_every_time_and_in_every_process() -> None:
    names, edges = random_dag(60, seed=7)
    assert layout(names, edges) == layout(names, edges)

    code = (
        "import random, sys; sys.path.insert(0, 'tests/unit'); from test_dag import random_dag;"
        "from daemon.ui.dag import layout; print(repr(layout(*random_dag(60, seed=7))))"
    )
    root = Path(__file__).resolve().parents[2]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {repr(layout(names, edges)) + "\n"}


# What the layout leaves out


def test_edges_naming_unknown_steps_or_their_own_step_are_left_out() -> None:
    drawn = layout(["a", "b", "a"], [*data("a>b", "a>ghost", "ghost>b", "b>b"), Edge("a", "b", "data")])

    assert list(drawn.nodes) == ["a", "b"]
    assert [route.edge for route in drawn.routes] == data("a>b")


def test_a_cycle_is_broken_by_drawing_its_closing_edge_backwards() -> None:
    drawn = layout(["a", "b", "c"], data("a>b", "b>c", "c>a"))

    assert columns(drawn) == [["a"], ["b"], ["c"]]
    backwards = [route for route in drawn.routes if route.points[0][0] > route.points[-1][0]]
    assert [route.edge for route in backwards] == data("c>a")


def test_a_long_cycle_does_not_reach_the_recursion_limit() -> None:
    names = [f"s{i}" for i in range(5000)]
    edges = [Edge(a, b, "data") for a, b in itertools.pairwise([*names, names[0]])]

    drawn = layout(names, edges)

    assert len({place.x for place in drawn.nodes.values()}) == 5000


def test_nothing_to_lay_out() -> None:
    drawn = layout([], data("a>b"))

    assert (drawn.nodes, drawn.routes) == ({}, ())
    assert drawn.width > 0
    assert drawn.height > 0


# SVG


def parse(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    return ET.fromstring(str(markup))


def steps(root: ET.Element) -> dict[str, ET.Element]:
    return {group.get("data-step"): group for group in root.iter(f"{SVG}g") if group.get("data-step")}


def test_names_and_details_are_escaped() -> None:
    name = '<script>alert("x")</script>'
    drawn = layout([name, "b"], [Edge(name, "b", "data")])
    boxes = {name: Box("failed", name, detail="<b>&</b>"), "b": Box("succeeded", "b")}

    markup = svg(drawn, boxes, href=lambda step: f"/runs/1/steps/{step}")

    assert "<script>" not in markup
    assert "<b>" not in markup
    assert "&lt;script&gt;" in markup
    root = parse(markup)
    assert steps(root)[name].get("data-status") == "failed"
    (link,) = [a for a in root.iter(f"{SVG}a") if a.find(f"{SVG}g").get("data-step") == name]
    assert link.get("href") == f"/runs/1/steps/{name}"


def test_status_is_told_by_word_and_symbol_and_summed_up_in_the_label() -> None:
    names = ["a", "b", "c", "d"]
    boxes = {
        "a": Box("succeeded", "a"),
        "b": Box("succeeded", "b"),
        "c": Box("succeeded", "c", detail="3/10 succeeded"),
        "d": Box("running", "d"),
    }

    root = parse(svg(layout(names, data("a>b", "b>c", "c>d")), boxes))

    assert root.get("role") == "img"
    assert root.get("aria-label") == "DAG of 4 steps: 3 succeeded, 1 running"
    groups = steps(root)
    assert [groups[name].get("data-status") for name in names] == ["succeeded"] * 3 + ["running"]
    assert groups["d"].get("class") == "step status-running"
    texts = ["".join(text.itertext()) for text in groups["c"].iter(f"{SVG}text")]
    assert texts == ["c", "✓ succeeded", "3/10 succeeded"]
    assert "● running" in "".join(groups["d"].itertext())


def test_a_step_without_a_box_is_drawn_pending() -> None:
    root = parse(svg(layout(["a"], []), {}))

    assert steps(root)["a"].get("data-status") == "pending"
    assert root.get("aria-label") == "DAG of 1 step: 1 pending"


def test_edges_are_drawn_under_the_boxes_with_their_kind() -> None:
    drawn = layout(["a", "b", "c"], [Edge("a", "b", "data"), Edge("b", "c", "after")])

    root = parse(svg(drawn, {}))

    order = [
        "step" if element.get("data-step") else "edge"
        for element in root.iter()
        if element.get("data-step") or "edge" in element.get("class", "").split()
    ]
    assert order == ["edge", "edge", "step", "step", "step"]
    paths = [path for path in root.iter(f"{SVG}path") if "edge" in path.get("class").split()]
    assert [path.get("class") for path in paths] == ["edge edge-data", "edge edge-after"]
    assert all(path.get("marker-end") == "url(#sluice-dag-arrow)" for path in paths)


def test_a_long_name_is_cut_short_in_the_box_and_whole_in_the_tooltip() -> None:
    name = "train-the-very-large-language-model-on-everything"

    group = steps(parse(svg(layout([name], []), {name: Box("running", name)})))[name]

    shown = group.find(f"{SVG}text").text
    assert shown.endswith("…")
    assert len(shown) < len(name)
    assert name.startswith(shown[:-1])
    assert group.find(f"{SVG}title").text.startswith(name)


def test_the_drawing_scales_and_its_links_are_focusable() -> None:
    drawn = layout(["a", "b"], data("a>b"))

    root = parse(svg(drawn, {}, href=lambda step: f"/steps/{step}"))

    width, height = root.get("width"), root.get("height")
    assert root.get("viewBox") == f"0 0 {width} {height}"
    assert float(width) == pytest.approx(drawn.width)
    assert float(height) == pytest.approx(drawn.height)
    links = list(root.iter(f"{SVG}a"))
    assert [(link.get("href"), link.get("class")) for link in links] == [
        ("/steps/a", "step-link"),
        ("/steps/b", "step-link"),
    ]
    # Links inside role="img" would be hidden from screen readers.
    assert root.get("role") == "group"
    assert root.get("aria-label") == "DAG of 2 steps: 2 pending"

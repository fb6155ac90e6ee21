"""How long the run page's DAG layout and SVG take for a large pipeline.

Method: a seeded pipeline of ``--steps`` steps in chains of 10, to ``--edges`` edges in all (a third of
the extra ones ``after:``), in one of two shapes:

- ``pipeline`` (default): each step also reads a step of a random chain one to three positions back
  (fan-ins), so the DAG is about as deep as a chain — the shape of real pipelines;
- ``deep``: the extra input is any earlier step of an earlier chain, so chains start one after another
  (some 70 layers for 200 steps) and many edges span dozens of layers — a worst case.

``layout`` and ``svg`` are timed over ``--repeat`` calls each; the best and median are printed, with the
drawing's size.

Run: .venv/bin/python tests/bench/bench_dag_layout.py [--shape pipeline|deep] [--steps 200] [--edges 400]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from daemon.ui.dag import Box, Edge, layout, svg


def pipeline(shape: str, steps: int, edges: int, seed: int = 7) -> tuple[list[str], list[Edge]]:
    rng = random.Random(seed)
    names = [f"step-{i:03d}" for i in range(steps)]
    chain_length = 10
    made: dict[tuple[int, int], str] = {}

    def extra_input(i: int) -> int | None:
        position = i % chain_length
        if shape == "deep":
            return rng.randrange(0, i - position) if i >= chain_length else None
        back = rng.randint(1, 3)
        return (
            rng.randrange(0, steps // chain_length) * chain_length + position - back
            if position >= back
            else None
        )

    for i in range(steps):
        if i % chain_length:
            made[i - 1, i] = "data"
        source = extra_input(i)
        if source is not None and source < steps:
            made.setdefault((source, i), "data")
    while len(made) < edges:
        target = rng.randrange(steps)
        source = extra_input(target)
        if source is not None and source < steps:
            made.setdefault((source, target), rng.choice(["data", "data", "after"]))
    return names, [Edge(names[a], names[b], kind) for (a, b), kind in made.items()]


def timed(call, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["pipeline", "deep"], default="pipeline")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--edges", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    names, edges = pipeline(args.shape, args.steps, args.edges)
    drawn = layout(names, edges)
    boxes = {name: Box("succeeded", name) for name in names}
    for label, call in (("layout", lambda: layout(names, edges)), ("svg", lambda: svg(drawn, boxes))):
        times = timed(call, args.repeat)
        print(f"{label}: best {min(times):.2f} ms, median {statistics.median(times):.2f} ms")
    print(f"{args.shape}: {len(names)} steps, {len(edges)} edges: {drawn.width:.0f} × {drawn.height:.0f} px")


if __name__ == "__main__":
    main()

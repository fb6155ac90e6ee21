"""What goes into a step's fingerprint, and what a miss reports as changed (pure)."""

from __future__ import annotations

import msgspec

from daemon.documents.specs import FromDatastore, FromStep, StepSpec
from daemon.rules.step_fingerprints import changed, fingerprint, shape_of, step_components

STEP = StepSpec(
    name="score",
    command=["score", "${inputs.features}", "--model", "${params.model}", "--out", "${outputs.scores}"],
    inputs={
        "features": FromStep(step="prep", output="features"),
        "raw": FromDatastore(datastore="landing", path="days/${params.day}"),
    },
    outputs=["scores"],
    env={"MODE": "fast"},
)
RUN = {"pipeline": "flow", "version": "1", "id": "r1"}
UPSTREAM = {"prep": "sha256:prep"}
DATA = {"input raw": "sha256:data"}


def components(step: StepSpec = STEP, **overrides) -> dict[str, str]:
    arguments = {"source_digest": "sha256:src", "params": {"model": "m", "day": "mon", "other": 1},
                 "run": RUN, "upstream": UPSTREAM, "data": DATA} | overrides  # fmt: skip
    return step_components(shape_of(step), **arguments)


def test_components_name_the_parts_and_only_the_parameters_the_step_uses() -> None:
    assert sorted(components()) == [
        "command", "env", "image", "input features", "input raw", "outputs", "parameter day",
        "parameter model", "source",
    ]  # fmt: skip
    # "other" is not used by the step: changing it changes nothing.
    assert components(params={"model": "m", "day": "mon", "other": 2}) == components()


def test_what_differs_is_named() -> None:
    before = components()
    assert changed(before, components(params={"model": "x", "day": "mon"})) == ["parameter model"]
    assert changed(before, components(data={"input raw": "sha256:new"})) == ["input raw"]
    assert changed(before, components(source_digest="sha256:other")) == ["source"]
    edited = msgspec.structs.replace(STEP, command=[*STEP.command, "--verbose"])
    assert changed(before, components(edited)) == ["command"]
    resized = msgspec.structs.replace(STEP, retries=3, timeout=60.0, selector={"zone": "eu"})
    assert changed(before, components(resized)) == []


def test_the_fingerprint_follows_the_components_and_resources_do_not_count() -> None:
    assert fingerprint(components()) == fingerprint(components())
    assert fingerprint(components()) != fingerprint(components(source_digest=None))
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})


def test_a_step_using_the_run_id_differs_in_every_run() -> None:
    uses_id = StepSpec(name="tag", command=["tag", "${run.id}"])
    first = components(uses_id)
    second = components(uses_id, run=RUN | {"id": "r2"})
    assert changed(first, second) == ["run id"]


def test_upstream_steps_count_with_the_output_read_and_after_edges_count_whole() -> None:
    direct = StepSpec(name="right", command=["right", "${steps.prep.outputs.features}"], after=["check"])
    assert shape_of(STEP).upstream == {"input features": ("prep", "features")}
    assert shape_of(direct).upstream == {
        "input steps.prep.outputs.features": ("prep", "features"),
        "after check": ("check", None),
    }
    parts = components(direct, upstream={"prep": "sha256:prep", "check": "sha256:check"})
    assert parts["input steps.prep.outputs.features"] == "sha256:prep features"
    assert parts["after check"] == "sha256:check"
    moved = components(direct, upstream={"prep": "sha256:prep", "check": "sha256:other"})
    assert changed(parts, moved) == ["after check"]


def test_reading_another_output_of_the_same_step_is_a_change() -> None:
    def reads(first: str, second: str) -> StepSpec:
        inputs = {"a": FromStep(step="prep", output=first), "b": FromStep(step="prep", output=second)}
        return StepSpec(name="both", command=["both"], inputs=inputs)

    straight = components(reads("x", "y"), data={})
    swapped = components(reads("y", "x"), data={})
    assert changed(straight, swapped) == ["input a", "input b"]

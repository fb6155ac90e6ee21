"""What goes into a step's fingerprint, and what a miss reports as changed (pure)."""

from __future__ import annotations

import msgspec

from daemon.documents.specs import FromDatastore, FromStep, StepSpec
from daemon.fingerprints import changed, fingerprint, shape_of, step_components

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
INPUTS = {"features": "sha256:prep", "raw": "sha256:data"}


def components(step: StepSpec = STEP, **overrides) -> dict[str, str]:
    arguments = {"source_digest": "sha256:src", "params": {"model": "m", "day": "mon", "other": 1},
                 "run": RUN, "inputs": INPUTS} | overrides  # fmt: skip
    return step_components(step, shape_of(step), **arguments)


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
    assert changed(before, components(inputs=INPUTS | {"raw": "sha256:new"})) == ["input raw"]
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


def test_upstream_references_cover_inputs_and_direct_output_references() -> None:
    direct = StepSpec(name="right", command=["right", "${steps.prep.outputs.features}"], after=["prep"])
    assert shape_of(STEP).upstream == {"features": "prep"}
    assert shape_of(direct).upstream == {"steps.prep.outputs.features": "prep"}
    with_input = components(direct, inputs={"steps.prep.outputs.features": "sha256:prep"})
    assert with_input["input steps.prep.outputs.features"] == "sha256:prep"

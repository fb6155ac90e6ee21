"""Rendering for ``s3`` datastores: roots in the agent's staging directory per step run, the stores
the assignment carries, ``mode: uri`` inputs, and where the daemon records outputs."""

from __future__ import annotations

import msgspec
import pytest

from daemon.documents.specs import FromStep, PipelineSpec
from daemon.documents.template import TemplateError
from daemon.planning.contexts import Datastores
from daemon.rules.rendering import RunContext, assignment, render_step
from kit.objectstore import S3Location
from runners.protocol import Upstream

LANDING = S3Location(bucket="acme-landing", prefix="in", access_key_id_env="K", secret_access_key_env="S")
OUTPUTS = S3Location(bucket="acme-runs")


def datastores(default_on_s3: bool) -> Datastores:
    found = Datastores()
    found.paths = {"scratch": "/daemon/scratch"} | ({} if default_on_s3 else {"default": "/daemon/default"})
    found.stores = {"landing": LANDING} | ({"default": OUTPUTS} if default_on_s3 else {})
    return found


def pipeline(mode: str = "download") -> PipelineSpec:
    raw = {"from": "datastore", "datastore": "landing", "path": "d/${params.date}", "mode": mode}
    return msgspec.convert(
        {
            "name": "p",
            "params": {"date": {"type": "string"}},
            "steps": [
                {
                    "name": "prep",
                    "command": ["prep", "${inputs.raw}"],
                    "inputs": {"raw": raw},
                    "outputs": ["f"],
                },
                {
                    "name": "score",
                    "command": ["score"],
                    "inputs": {"f": {"from": "step", "step": "prep", "output": "f"}},
                },
            ],
        },
        PipelineSpec,
    )


def run_of(spec: PipelineSpec) -> RunContext:
    return RunContext(
        id="r1", pipeline="p", version=1, params={"date": "2024"}, spec=spec, source_digest=None
    )


def test_s3_roots_are_the_step_runs_directories_in_the_agents_staging() -> None:
    found = datastores(default_on_s3=True)

    roots = found.for_agent({"scratch": "/agent/scratch", "landing": "/ignored"}, "/stage", "r1/prep")

    assert roots == {
        "scratch": "/agent/scratch",
        "landing": "/stage/r1/prep/landing",
        "default": "/stage/r1/prep/default",
    }
    assert found.for_agent({}) == {"scratch": "/daemon/scratch"}


def test_an_assignment_carries_the_s3_stores_it_uses_and_paths_under_their_roots() -> None:
    found = datastores(default_on_s3=True)
    spec = pipeline()
    roots = found.for_agent({}, "/stage", "r1/prep")

    rendered = render_step(run_of(spec), spec.steps[0], roots, None, found.stores)
    message = assignment(run_of(spec), spec.steps[0], rendered, roots, attempt_id=7, number=2, gpus=())

    assert message.stores == {"default": OUTPUTS, "landing": LANDING}
    assert message.inputs == {"raw": "/stage/r1/prep/landing/d/2024"}
    assert message.outputs == {"f": "/stage/r1/prep/default/runs/r1/prep/f"}
    assert message.log_path == "/stage/r1/prep/default/runs/r1/prep/logs/attempt-2.log"
    assert message.datastores == {"default": "/stage/r1/prep/default", "landing": "/stage/r1/prep/landing"}
    assert message.argv == ["prep", "/stage/r1/prep/landing/d/2024"]


def test_a_uri_input_is_the_objects_uri_and_nothing_to_download() -> None:
    found = datastores(default_on_s3=False)
    spec = pipeline(mode="uri")
    roots = found.for_agent({}, "/stage", "r1/prep")

    rendered = render_step(run_of(spec), spec.steps[0], roots, None, found.stores)

    assert rendered.argv == ["prep", "s3://acme-landing/in/d/2024"]
    assert rendered.env["SLUICE_INPUT_RAW"] == "s3://acme-landing/in/d/2024"
    assert rendered.inputs == {}
    assert rendered.stores == {}
    assert rendered.datastores == {"default": "/daemon/default"}
    assert not found.needs_staging(spec.steps[0])


def test_a_step_output_in_uri_mode_is_its_prefix_on_an_s3_default() -> None:
    found = datastores(default_on_s3=True)
    spec = pipeline()
    score = msgspec.structs.replace(
        spec.steps[1],
        inputs={"f": FromStep(step="prep", output="f", mode="uri")},
        command=["s", "${inputs.f}"],
    )
    roots = found.for_agent({}, "/stage", "r1/score")

    rendered = render_step(run_of(spec), score, roots, None, found.stores)

    assert rendered.argv == ["s", "s3://acme-runs/runs/r1/prep/f"]
    assert rendered.inputs == {}
    assert rendered.stores == {"default": OUTPUTS}  # its own outputs and log still go there


def test_an_assignment_names_the_inputs_that_are_step_outputs_and_who_wrote_them() -> None:
    # The agent fails an attempt whose step output is not published; a datastore path may be empty.
    found = datastores(default_on_s3=True)
    spec = pipeline()
    run = run_of(spec)
    reused = RunContext("r2", "p", 1, run.params, spec, None, reused={"prep": ("r1", "prep")})

    prep = render_step(run, spec.steps[0], found.for_agent({}, "/stage", "r1/prep"), None, found.stores)
    roots = found.for_agent({}, "/stage", "r2/score")
    score = render_step(reused, spec.steps[1], roots, None, found.stores)
    message = assignment(reused, spec.steps[1], score, roots, attempt_id=7, number=1, gpus=())

    assert prep.upstream == {}
    assert message.inputs == {"f": "/stage/r2/score/default/runs/r1/prep/f"}
    assert message.upstream == {"f": Upstream(run_id="r1", step="prep", output="f")}


def test_a_uri_input_must_stay_inside_its_datastore() -> None:
    found = datastores(default_on_s3=False)
    spec = pipeline(mode="uri")

    with pytest.raises(TemplateError, match="not inside datastore 'landing'"):
        render_step(
            RunContext("r1", "p", 1, {"date": ".."}, spec, None), spec.steps[0], {}, None, found.stores
        )


@pytest.mark.parametrize("date", ["a//b", "./a", "a/.", "a\nb"])
@pytest.mark.parametrize("mode", ["download", "uri"])
def test_an_s3_input_path_must_be_an_object_key(mode: str, date: str) -> None:
    # A param (an event's payload) rendering to such a path reached obstore, whose ValueError (no
    # store error) escaped run creation as a traceback; now it is the input's reason.
    found = datastores(default_on_s3=False)
    spec = pipeline(mode=mode)
    run = RunContext("r1", "p", 1, {"date": date}, spec, None)

    with pytest.raises(TemplateError, match="in datastore 'landing' is no object key"):
        render_step(run, spec.steps[0], found.for_agent({}, "/stage", "r1/prep"), None, found.stores)
    with pytest.raises(TemplateError, match="is no object key"):
        found.where("landing", f"d/{date}")
    assert found.where("landing", "d/2024/") == "s3://acme-landing/in/d/2024/"


def test_steps_need_staging_when_they_use_an_s3_datastore() -> None:
    spec = pipeline()

    assert datastores(default_on_s3=False).needs_staging(spec.steps[0])
    assert not datastores(default_on_s3=False).needs_staging(spec.steps[1])
    assert datastores(default_on_s3=True).needs_staging(spec.steps[1])


def test_the_daemon_records_outputs_on_s3_as_uris() -> None:
    assert (
        datastores(default_on_s3=True).where("default", "runs/r1/prep/f") == "s3://acme-runs/runs/r1/prep/f"
    )
    assert (
        datastores(default_on_s3=False).where("default", "runs/r1/prep/f") == "/daemon/default/runs/r1/prep/f"
    )

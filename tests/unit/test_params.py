"""Run parameters against a version's schema, and rendering a step for an agent (pure)."""

from __future__ import annotations

import msgspec
import pytest

from daemon.documents.specs import ParamSpec, PipelineSpec
from daemon.errors import Invalid
from daemon.rules.params import param_text, validate_params
from daemon.rules.rendering import RunContext, assignment, render_step

SCHEMA = {
    "date": ParamSpec(type="string"),
    "rows": ParamSpec(type="integer", default=10),
    "ratio": ParamSpec(type="number", default=0.5),
    "full": ParamSpec(type="boolean", default=False),
}


def test_defaults_filled_and_numbers_normalised() -> None:
    assert validate_params(SCHEMA, {"date": "d", "ratio": 1}, what="p") == {
        "date": "d",
        "rows": 10,
        "ratio": 1.0,
        "full": False,
    }


def test_problems_name_each_param() -> None:
    with pytest.raises(Invalid) as caught:
        validate_params(SCHEMA, {"rows": "ten", "extra": 1, "full": 1}, what="pipeline p version 1")
    paths = [detail["path"] for detail in caught.value.details]
    assert paths == ["params.extra", "params.date", "params.rows", "params.full"]
    assert caught.value.status == 422
    assert "params.extra" in caught.value.message


def test_params_must_fit_an_assignment_each_and_together() -> None:
    schema = {"a": ParamSpec(type="string"), "b": ParamSpec(type="string")}
    assert validate_params(schema, {"a": "x" * 40, "b": "y" * 40}, what="p", max_bytes=100)
    with pytest.raises(Invalid) as one:
        validate_params(schema, {"a": "x" * 200, "b": "y"}, what="pipeline p version 1", max_bytes=100)
    assert one.value.details == [{"path": "params.a", "message": "202 bytes, more than the 100 allowed"}]
    with pytest.raises(Invalid) as together:
        validate_params(schema, {"a": "x" * 60, "b": "y" * 60}, what="p", max_bytes=100)
    assert together.value.details == [
        {"path": "params", "message": "135 bytes in all, more than the 100 allowed"}
    ]


def test_a_boolean_is_no_integer() -> None:
    with pytest.raises(Invalid):
        validate_params({"n": ParamSpec(type="integer")}, {"n": True}, what="p")


def test_a_list_param_takes_a_json_list_of_scalars_or_its_json_text() -> None:
    schema = {"models": ParamSpec(type="list"), "tags": ParamSpec(type="list", default=[])}
    assert validate_params(schema, {"models": ["a", 2, True]}, what="p") == {
        "models": ["a", 2, True],
        "tags": [],
    }
    assert validate_params(schema, {"models": '["a", 2.5]'}, what="p")["models"] == ["a", 2.5]


@pytest.mark.parametrize("value", ["a,b", '{"a": 1}', [["nested"]], [None], 3])
def test_a_list_param_refuses_anything_else_naming_the_param(value: object) -> None:
    with pytest.raises(Invalid) as caught:
        validate_params({"models": ParamSpec(type="list")}, {"models": value}, what="p")
    assert caught.value.details == [
        {"path": "params.models", "message": f"must be a list of strings, numbers or booleans, not {value!r}"}
    ]


def test_a_list_param_is_held_to_the_byte_bound_and_storable_text() -> None:
    schema = {"models": ParamSpec(type="list")}
    with pytest.raises(Invalid) as large:
        validate_params(schema, {"models": ["x" * 200]}, what="p", max_bytes=100)
    assert large.value.details[0]["message"] == "204 bytes, more than the 100 allowed"
    with pytest.raises(Invalid) as nul:
        validate_params(schema, {"models": ["a\0b"]}, what="p")
    assert "NUL" in nul.value.details[0]["message"]


def test_param_text_reads_like_json_for_booleans_and_lists() -> None:
    assert param_text(True) == "true"
    assert param_text(2.5) == "2.5"
    assert param_text("007") == "007"
    assert param_text(["a", 1, False]) == '["a",1,false]'


SPEC = msgspec.convert(
    {
        "name": "p",
        "params": {"date": {"type": "string"}, "full": {"type": "boolean", "default": False}},
        "steps": [
            {"name": "prep", "command": ["prep", "${outputs.out}"], "outputs": ["out"]},
            {
                "name": "score",
                "command": ["score", "${inputs.feat}", "${inputs.raw}", "${params.full}", "$${HOME}"],
                "inputs": {
                    "feat": {"from": "step", "step": "prep", "output": "out"},
                    "raw": {"from": "datastore", "datastore": "landing", "path": "in/${params.date}"},
                },
                "env": {"RUN": "${run.id}"},
                "resources": {"cpu": 2, "memory": 0, "gpu": 1},
                "timeout": 60.0,
            },
        ],
    },
    PipelineSpec,
)


def test_rendering_uses_the_agents_datastore_paths() -> None:
    run = RunContext(
        id="r1", pipeline="p", version=3, params={"date": "2024", "full": True}, spec=SPEC, source_digest=None
    )
    datastores = {"default": "/agent/default", "landing": "/agent/landing"}
    rendered = render_step(run, SPEC.steps[1], datastores)
    assert rendered.argv == [
        "score",
        "/agent/default/runs/r1/prep/out",
        "/agent/landing/in/2024",
        "true",
        "${HOME}",
    ]
    assert rendered.env["RUN"] == "r1"
    assert rendered.env["SLUICE_INPUT_RAW"] == "/agent/landing/in/2024"
    assert rendered.env["SLUICE_INPUT_FEAT"] == "/agent/default/runs/r1/prep/out"
    assert rendered.datastores == {"default": "/agent/default", "landing": "/agent/landing"}
    message = assignment(run, SPEC.steps[1], rendered, datastores, attempt_id=7, number=2, gpus=(1,))
    assert message.log_path == "/agent/default/runs/r1/score/logs/attempt-2.log"
    assert message.gpus == [1]
    assert message.resources.gpu == 1
    assert message.timeout_s == 60.0
    assert message.env["SLUICE_ATTEMPT"] == "2"


def test_an_unknown_datastore_cannot_render() -> None:
    run = RunContext(
        id="r1", pipeline="p", version=1, params={"date": "d", "full": False}, spec=SPEC, source_digest=None
    )
    with pytest.raises(Invalid, match="unknown datastore 'landing'"):
        render_step(run, SPEC.steps[1], {"default": "/d"})

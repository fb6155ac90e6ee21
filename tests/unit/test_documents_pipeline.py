"""Pipeline documents: the semantic checks, and how defaults merge into steps."""

from __future__ import annotations

import pytest

from daemon.documents import PipelineSpec
from daemon.documents.graph import dependencies, find_cycle
from daemon.documents.specs import FromStep, Resources
from tests.unit.documents_helpers import parse, problems

NAME_RULE = "(use a-z, 0-9 and '-', starting with a letter or digit, at most 63)"
IDENTIFIER_RULE = "(use letters, digits and '_', not starting with a digit)"
LIST_WORDS = "a list of strings, numbers or booleans"
SCALAR_WORDS = "a boolean or an integer or a number or a string, got a list"
CPU_RULE = "(use a number of cores above 0, e.g. 2, 0.5 or 500m)"
STEP_NAMESPACES = (
    "params.X, inputs.X, outputs.X, steps.STEP.outputs.X, run.id, run.pipeline, run.version, "
    "item, item.index, item.files"
)


def pipeline(text: str) -> PipelineSpec:
    [document] = parse(text)
    assert isinstance(document.spec, PipelineSpec)
    return document.spec


# Graph


def test_cycle_is_named_in_run_order() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            after: [c]
          - name: b
            command: [x]
            after: [a]
          - name: c
            command: [x]
            after: [b]
    """

    assert problems(text) == ["p.yaml:3 steps: cycle: a → b → c → a"]


def test_cycle_through_data_dependencies() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: first
            command: [x, "${steps.second.outputs.o}"]
            outputs: [o]
          - name: second
            command: [x]
            inputs: {i: "${steps.first.outputs.o}"}
            outputs: [o]
    """

    assert problems(text) == ["p.yaml:3 steps: cycle: first → second → first"]


def test_find_cycle_starts_from_the_first_listed_node_and_closes() -> None:
    # c waits for b, b for a, a for c: a runs "first".
    assert find_cycle({"a": ["c"], "b": ["a"], "c": ["b"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": [], "a": ["b"], "b": []}) is None


def test_dependencies_come_from_inputs_substitutions_and_after_once_each() -> None:
    spec = pipeline(
        """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            outputs: [o]
          - name: b
            command: [x]
            outputs: [o]
          - name: c
            command: [x, "${steps.b.outputs.o}"]
            inputs: {i: "${steps.a.outputs.o}"}
            env: {B: "${steps.b.outputs.o}"}
            after: [a]
        """
    )

    assert dependencies(spec.steps) == {"a": [], "b": [], "c": ["a", "b"]}


def test_step_cannot_come_after_itself() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            after: [a]
    """

    assert problems(text) == ["p.yaml:6 steps[0].after[0]: a step cannot come after itself"]


def test_step_cannot_use_its_own_output_through_steps() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x, "${steps.a.outputs.o}"]
            outputs: [o]
    """

    assert problems(text) == [
        "p.yaml:5 steps[0].command[1]: ${steps.a.outputs.o}: "
        "a step cannot use its own output this way (use ${outputs.o})"
    ]


def test_unknown_steps_and_outputs_in_after_inputs_and_substitutions() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            outputs: [o]
          - name: b
            command: [x, "${steps.zz.outputs.o}", "${steps.a.outputs.nope}"]
            inputs:
              one: ${steps.ghost.outputs.o}
              two: ${steps.a.outputs.missing}
            after: [later]
    """

    assert problems(text) == [
        "p.yaml:8 steps[1].command[1]: ${steps.zz.outputs.o}: unknown step 'zz'",
        "p.yaml:8 steps[1].command[2]: ${steps.a.outputs.nope}: step 'a' has no output 'nope'",
        "p.yaml:10 steps[1].inputs.one: unknown step 'ghost'",
        "p.yaml:11 steps[1].inputs.two: step 'a' has no output 'missing'",
        "p.yaml:12 steps[1].after[0]: unknown step 'later'",
    ]


def test_step_input_must_be_exactly_one_step_output_reference() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            outputs: [o]
          - name: b
            command: [x]
            inputs:
              one: ${steps.a.outputs.o}${x}
              two: steps.a.outputs.o
    """

    must = "must be ${steps.STEP.outputs.NAME} or a mapping with datastore and path"
    assert problems(text) == [
        f"p.yaml:10 steps[1].inputs.one: {must}",
        f"p.yaml:11 steps[1].inputs.two: {must}",
    ]


def test_inputs_and_outputs_of_the_step_itself() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: ["${inputs.raw}", "${outputs.out}", "${inputs.nope}", "${outputs.nada}"]
            inputs: {raw: {datastore: landing, path: x}}
            outputs: [out]
    """

    assert problems(text) == [
        "p.yaml:5 steps[0].command[2]: ${inputs.nope}: the step has no input 'nope'",
        "p.yaml:5 steps[0].command[3]: ${outputs.nada}: the step has no output 'nada'",
    ]


def test_input_cannot_share_a_name_with_an_output() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            inputs: {data: {datastore: landing, path: x}}
            outputs: [data]
    """

    assert problems(text) == ["p.yaml:6 steps[0].inputs.data: input 'data' has the name of an output"]


# Substitutions


def test_unknown_param_unknown_namespace_and_malformed_substitution() -> None:
    text = """\
        kind: Pipeline
        name: p
        params: {date: {type: string}}
        steps:
          - name: a
            command: ["${params.date}", "${params.day}", "${foo.bar}", "--x=${oops", "$${HOME}", "${run.id}"]
            env: {WHEN: "${run.when}"}
    """

    assert problems(text) == [
        "p.yaml:6 steps[0].command[1]: ${params.day}: unknown param 'day'",
        f"p.yaml:6 steps[0].command[2]: unknown substitution ${{foo.bar}} (use {STEP_NAMESPACES})",
        "p.yaml:6 steps[0].command[3]: malformed substitution at '${oops'",
        f"p.yaml:7 steps[0].env.WHEN: unknown substitution ${{run.when}} (use {STEP_NAMESPACES})",
    ]


def test_escaped_dollar_brace_is_not_a_substitution() -> None:
    spec = pipeline(
        """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [sh, -c, "echo $${HOME} $PATH"]
        """
    )

    assert spec.steps[0].command[2] == "echo $${HOME} $PATH"


def test_datastore_input_path_allows_only_params_and_run() -> None:
    text = """\
        kind: Pipeline
        name: p
        params: {date: {type: string}}
        steps:
          - name: a
            command: [x]
            inputs:
              ok: {datastore: landing, path: "days/${params.date}/${run.id}"}
              bad: {datastore: landing, path: "${outputs.o}"}
              up: {datastore: landing, path: ../secret}
              abs: {datastore: Landing, path: /etc}
    """

    assert problems(text) == [
        "p.yaml:9 steps[0].inputs.bad.path: unknown substitution ${outputs.o} "
        "(use params.X, run.id, run.pipeline, run.version)",
        "p.yaml:10 steps[0].inputs.up.path: must be relative to the datastore, without '..'",
        f"p.yaml:11 steps[0].inputs.abs.datastore: bad name 'Landing' {NAME_RULE}",
        "p.yaml:11 steps[0].inputs.abs.path: must be relative to the datastore, without '..'",
    ]


# Names


def test_duplicate_and_bad_step_names() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
          - name: a
            command: [x]
          - name: Bad_Name
            command: [x]
    """

    assert problems(text) == [
        "p.yaml:6 steps[1].name: duplicate step name (first at steps[0])",
        f"p.yaml:8 steps[2].name: bad name 'Bad_Name' {NAME_RULE}",
    ]


def test_no_output_is_named_logs() -> None:
    # runs/<run>/<step>/logs holds the attempts' logs: an agent publishing an output there (s3)
    # would delete them as an earlier attempt's leftovers, and a local log would be in the output.
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            outputs: [logs]
    """

    assert problems(text) == [
        "p.yaml:6 steps[0].outputs[0]: 'logs' is reserved (runs/<run>/<step>/logs holds the step's logs)"
    ]


def test_output_names_become_distinct_environment_variables() -> None:
    text = """\
        kind: Pipeline
        name: p
        params: {1st: {type: string}}
        steps:
          - name: a
            command: [x]
            outputs: [o, o, O, bad-name]
            env: {9LIVES: x}
    """

    assert problems(text) == [
        f"p.yaml:3 params.1st: bad name '1st' {IDENTIFIER_RULE}",
        "p.yaml:7 steps[0].outputs[1]: duplicate name 'o'",
        "p.yaml:7 steps[0].outputs[2]: 'O' and 'o' would both be SLUICE_OUTPUT_O",
        f"p.yaml:7 steps[0].outputs[3]: bad name 'bad-name' {IDENTIFIER_RULE}",
        f"p.yaml:8 steps[0].env.9LIVES: bad name '9LIVES' {IDENTIFIER_RULE}",
    ]


# Fields


def test_gpu_memory_needs_gpu_with_the_user_visible_format() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            resources:
              gpu_memory: 20Gi
    """

    assert problems(text, "pipeline.yaml") == ["pipeline.yaml:7 steps[0].resources.gpu_memory: needs gpu"]


def test_bad_sizes_cpu_and_durations_are_reported_at_their_fields() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            resources: {cpu: 500x, memory: 4Gb, gpu: 1, gpu_memory: lots}
            timeout: 1 hour
    """

    assert problems(text) == [
        f"p.yaml:6 steps[0].resources.cpu: bad cpu '500x' {CPU_RULE}",
        "p.yaml:6 steps[0].resources.memory: bad size '4Gb' (use e.g. 512Mi, 4Gi)",
        "p.yaml:6 steps[0].resources.gpu_memory: bad size 'lots' (use e.g. 512Mi, 4Gi)",
        "p.yaml:7 steps[0].timeout: bad duration '1 hour' (use e.g. 30s, 5m, 1h30m)",
    ]


def test_millicores_and_sizes_normalise() -> None:
    spec = pipeline(
        """\
        kind: Pipeline
        name: p
        steps:
          - name: a
            command: [x]
            resources: {cpu: 500m, memory: 512Mi, gpu: 2, gpu_memory: 1G}
            timeout: 1h30m
        """
    )

    assert spec.steps[0].resources == Resources(cpu=0.5, memory=512 * 1024**2, gpu=2, gpu_memory=10**9)
    assert spec.steps[0].timeout == 5400.0


@pytest.mark.parametrize("timeout", ["0", "0s", "0m"])
def test_timeout_zero_is_refused(timeout: str) -> None:
    text = f"kind: Pipeline\nname: p\nsteps:\n  - name: a\n    command: [x]\n    timeout: {timeout}\n"

    assert problems(text) == ["p.yaml:6 steps[0].timeout: must be more than 0 (leave it out for no limit)"]


def test_empty_command_image_steps_and_source() -> None:
    assert problems("kind: Pipeline\nname: p\nsteps: []\n") == ["p.yaml:3 steps: needs at least one step"]
    text = """\
        kind: Pipeline
        name: p
        source: " "
        steps:
          - name: a
            command: []
            image: ""
    """
    assert problems(text) == [
        "p.yaml:3 source: must not be empty",
        "p.yaml:6 steps[0].command: must not be empty",
        "p.yaml:7 steps[0].image: must not be empty (leave it out to run a process)",
    ]


def test_missing_command_may_come_from_defaults_only() -> None:
    text = """\
        kind: Pipeline
        name: p
        steps:
          - name: a
    """

    assert problems(text) == ["p.yaml:4 steps[0].command: missing (set it in the step or in defaults)"]


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("{type: integer, default: x}", "p.yaml:3 params.n.default: must be an integer"),
        ("{type: integer, default: 1.5}", "p.yaml:3 params.n.default: must be an integer"),
        ("{type: boolean, default: no}", "p.yaml:3 params.n.default: must be a boolean"),
        ("{type: number, default: true}", "p.yaml:3 params.n.default: must be a number"),
        ("{type: string, default: 3}", "p.yaml:3 params.n.default: must be a string"),
        ("{type: string, default: [a]}", "p.yaml:3 params.n.default: must be a string"),
        ("{type: list, default: a}", "p.yaml:3 params.n.default: must be " + LIST_WORDS),
        ("{type: list, default: [a, [b]]}", "p.yaml:3 params.n.default[1]: expected " + SCALAR_WORDS),
        ("{type: text}", "p.yaml:3 params.n.type: invalid enum value 'text'"),
    ],
)
def test_bad_param_default_type(param: str, message: str) -> None:
    text = f"kind: Pipeline\nname: p\nparams:\n  n: {param}\nsteps: [{{name: a, command: [x]}}]\n"

    assert problems(text) == [message.replace("p.yaml:3", "p.yaml:4")]


def test_number_param_default_is_a_float() -> None:
    spec = pipeline(
        "kind: Pipeline\nname: p\nparams: {n: {type: number, default: 2}}\nsteps: [{name: a, command: [x]}]\n"
    )

    assert spec.params["n"].default == 2.0
    assert isinstance(spec.params["n"].default, float)


def test_list_param_default_keeps_its_items() -> None:
    spec = pipeline(
        "kind: Pipeline\nname: p\nparams: {m: {type: list, default: [a, 2, true]}}\n"
        "steps: [{name: a, command: [x, '${params.m}']}]\n"
    )

    assert spec.params["m"].default == ["a", 2, True]
    assert not spec.params["m"].required


# Defaults


def test_defaults_merge_into_each_step_and_env_selector_merge_by_key() -> None:
    spec = pipeline(
        """\
        kind: Pipeline
        name: p
        defaults:
          command: [run]
          retries: 3
          timeout: 10m
          env: {A: a, B: b}
          selector: {zone: eu}
          resources: {cpu: 2, memory: 1Gi}
        steps:
          - name: a
          - name: b
            command: [other]
            retries: 0
            env: {B: c}
            selector: {rack: r1}
            resources: {cpu: 1}
        """
    )

    a, b = spec.steps
    assert (a.command, a.retries, a.timeout, a.env, a.selector) == (
        ["run"],
        3,
        600.0,
        {"A": "a", "B": "b"},
        {"zone": "eu"},
    )
    assert a.resources == Resources(cpu=2.0, memory=1024**3)
    assert (b.command, b.retries, b.timeout) == (["other"], 0, 600.0)
    assert b.env == {"A": "a", "B": "c"}
    assert b.selector == {"zone": "eu", "rack": "r1"}
    # resources are taken whole, not merged key by key
    assert b.resources == Resources(cpu=1.0)


def test_problems_inherited_from_defaults_are_reported_there_and_name_the_step() -> None:
    text = """\
        kind: Pipeline
        name: p
        defaults:
          command: [run, "${steps.zz.outputs.o}"]
          after: [nope]
          env: {IN: "${inputs.data}", OK: fine}
        steps:
          - name: a
          - name: b
            after: []
            inputs: {data: {datastore: landing, path: x}}
    """

    assert problems(text) == [
        "p.yaml:4 defaults.command[1]: ${steps.zz.outputs.o}: unknown step 'zz' (in step a)",
        "p.yaml:4 defaults.command[1]: ${steps.zz.outputs.o}: unknown step 'zz' (in step b)",
        "p.yaml:5 defaults.after[0]: unknown step 'nope' (in step a)",
        "p.yaml:6 defaults.env.IN: ${inputs.data}: the step has no input 'data' (in step a)",
    ]


def test_field_problems_in_defaults_are_reported_once_at_defaults() -> None:
    text = """\
        kind: Pipeline
        name: p
        defaults:
          timeout: soon
          resources: {cpu: 0}
        steps:
          - name: a
            command: [x]
          - name: b
            command: [x]
    """

    assert problems(text) == [
        "p.yaml:4 defaults.timeout: bad duration 'soon' (use e.g. 30s, 5m, 1h30m)",
        f"p.yaml:5 defaults.resources.cpu: bad cpu 0.0 {CPU_RULE}",
    ]


def test_step_value_overriding_a_default_is_reported_at_the_step() -> None:
    text = """\
        kind: Pipeline
        name: p
        defaults:
          env: {X: "${outputs.o}"}
        steps:
          - name: a
            command: [x]
            env: {X: "${outputs.nope}"}
            outputs: [o]
    """

    assert problems(text) == ["p.yaml:8 steps[0].env.X: ${outputs.nope}: the step has no output 'nope'"]


def test_step_output_input_is_a_from_step_reference() -> None:
    spec = pipeline(
        """\
        kind: Pipeline
        name: p
        steps:
          - name: prep-1
            command: [x]
            outputs: [out_1]
          - name: use
            command: [x]
            inputs: {data: "${steps.prep-1.outputs.out_1}"}
        """
    )

    assert spec.steps[1].inputs == {"data": FromStep(step="prep-1", output="out_1")}

"""Trigger params from event fields: templating, coercion and validation (pure)."""

from __future__ import annotations

import pytest

from daemon.documents.specs import ParamSpec
from daemon.rules.event_params import Rejected, coerce, lookup, resolve_params, template

FIELDS = {
    "id": 7,
    "time": "2024-05-01T02:00:00+00:00",
    "trigger": "nightly",
    "scheduled_date": "2024-05-01",
    "subject": "scoring.requests.eu",
    "data": {"kind": "full", "count": 7, "ratio": 0.5, "flag": True, "code": "007", "nested": {"x": 1}},
    "headers": {"Nats-Msg-Id": "abc-1"},
    "paths": ["in/a.csv", "in/b.csv"],
    "run": {"id": "r1", "params": {"date": "2024-04-30"}},
}


def schema(**types: str) -> dict[str, ParamSpec]:
    return {name: ParamSpec(type=kind) for name, kind in types.items()}


def test_lookup_walks_dotted_paths_lists_and_names_the_missing_segment() -> None:
    assert lookup(FIELDS, "data.kind") == "full"
    assert lookup(FIELDS, "headers.Nats-Msg-Id") == "abc-1"
    assert lookup(FIELDS, "paths.1") == "in/b.csv"
    with pytest.raises(KeyError) as missing:
        lookup(FIELDS, "data.missing.deeper")
    assert missing.value.args[0] == "data.missing"


def test_whole_references_keep_json_types_embedded_ones_become_text() -> None:
    bindings = {
        "count": "${event.data.count}",
        "flag": "${event.data.flag}",
        "label": "n=${event.data.count} ok=${event.data.flag} ${event.data.nested}",
        "msg": "${event.headers.Nats-Msg-Id}",
        "literal": 5,
        "escaped": "$${HOME}/${event.scheduled_date}",
    }
    assert template(bindings, FIELDS) == {
        "count": 7,
        "flag": True,
        "label": 'n=7 ok=true {"x":1}',
        "msg": "abc-1",
        "literal": 5,
        "escaped": "${HOME}/2024-05-01",
    }


def test_missing_field_is_rejected_naming_the_field_and_param() -> None:
    with pytest.raises(Rejected) as rejected:
        template({"date": "day ${event.data.day}"}, FIELDS)
    assert "params.date" in rejected.value.message
    assert "event.data.day" in rejected.value.message


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("integer", "42", 42),
        ("integer", " -3 ", -3),
        ("integer", 7.0, 7),
        ("integer", "4.5", "4.5"),
        ("number", "2.5", 2.5),
        ("number", "2", 2.0),
        ("number", "nan", "nan"),
        ("boolean", "true", True),
        ("boolean", "False", False),
        ("boolean", "0", False),
        ("boolean", "maybe", "maybe"),
        ("string", "007", "007"),
        ("string", 7, "7"),
        ("string", True, "true"),
        ("string", ["a", "b"], '["a","b"]'),
    ],
)
def test_coerce(kind: str, value: object, expected: object) -> None:
    coerced = coerce(ParamSpec(type=kind), value)
    assert coerced == expected
    assert type(coerced) is type(expected)


def test_resolve_templates_coerces_fills_defaults_and_validates() -> None:
    params = schema(date="string", rows="integer", ratio="number", full="boolean", code="string")
    params["model"] = ParamSpec(type="string", default="prod")
    bindings = {
        "date": "${event.scheduled_date}",
        "rows": "${event.data.count}",
        "ratio": "${event.data.ratio}",
        "full": "${event.data.flag}",
        "code": "${event.data.code}",
    }
    values = resolve_params(params, bindings, FIELDS, what="pipeline p version 1")
    assert values == {
        "date": "2024-05-01",
        "rows": 7,
        "ratio": 0.5,
        "full": True,
        "code": "007",
        "model": "prod",
    }


def test_a_list_param_takes_a_whole_list_field_or_json_text() -> None:
    params = schema(files="list", models="list")
    bindings = {"files": "${event.paths}", "models": '["a", "b"]'}
    values = resolve_params(params, bindings, FIELDS, what="p")
    assert values == {"files": ["in/a.csv", "in/b.csv"], "models": ["a", "b"]}


def test_text_that_does_not_fit_the_type_is_rejected_with_the_param() -> None:
    with pytest.raises(Rejected) as rejected:
        resolve_params(
            schema(rows="integer"), {"rows": "${event.data.kind}"}, FIELDS, what="pipeline p version 1"
        )
    assert "params.rows" in rejected.value.message
    assert "'full'" in rejected.value.message
    assert rejected.value.details == [{"path": "params.rows", "message": "must be an integer, not 'full'"}]


def test_unknown_and_missing_required_params_are_rejected() -> None:
    with pytest.raises(Rejected) as rejected:
        resolve_params(schema(date="string"), {"other": "x"}, FIELDS, what="pipeline p version 2")
    assert {detail["path"] for detail in rejected.value.details} == {"params.other", "params.date"}

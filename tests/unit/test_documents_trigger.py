"""Trigger documents: the four sources, their options, cron expressions and event params."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon.documents import TriggerSpec, spec_from_json, spec_to_json
from daemon.documents.specs import CronSource, FilesNotifications, FilesSource, NatsSource, RunSource
from tests.unit.documents_helpers import parse, problems
from triggers.crontab import cron_trigger

HEAD = "kind: Trigger\nname: t\npipeline: p\n"
SUBJECT_RULE = "(tokens separated by '.', no spaces, '*' as a whole token, '>' only as the last token)"


def trigger(body: str) -> TriggerSpec:
    [document] = parse(HEAD + body)
    assert isinstance(document.spec, TriggerSpec)
    return document.spec


# Sources


def test_cron_source_with_defaults() -> None:
    spec = trigger("on: {cron: '0 2 * * *'}\n")

    assert spec.on == CronSource(cron="0 2 * * *", timezone="UTC", catchup="latest")
    assert spec.source == "cron"
    assert spec.version is None


def test_cron_with_seconds_timezone_and_catchup() -> None:
    spec = trigger("on:\n  cron: '*/10 0 2 * * *'\n  timezone: Europe/Madrid\n  catchup: all\n")

    assert spec.on == CronSource(cron="*/10 0 2 * * *", timezone="Europe/Madrid", catchup="all")


def test_files_source_with_every_option_in_canonical_units() -> None:
    spec = trigger(
        "on:\n"
        "  files: {datastore: landing, pattern: 'incoming/**/*.csv', events: [created, modified, created],\n"
        "          settle: 2s, batch: 500ms, watch: poll, poll_interval: 1m}\n"
    )

    assert spec.on == FilesSource(
        datastore="landing",
        pattern="incoming/**/*.csv",
        events=["created", "modified"],
        settle=2.0,
        batch=0.5,
        watch="poll",
        poll_interval=60.0,
    )
    assert spec.source == "files"


def test_files_source_defaults() -> None:
    spec = trigger("on:\n  files: {datastore: landing, pattern: '*.csv'}\n")

    assert spec.on == FilesSource(datastore="landing", pattern="*.csv")
    assert (spec.on.events, spec.on.settle, spec.on.batch, spec.on.watch) == (
        ["created", "modified"],
        2.0,
        0.0,
        "auto",
    )


def test_files_source_notifications_name_a_subject() -> None:
    spec = trigger(
        "on:\n  files: {datastore: lake, pattern: '*.csv', notifications: {subject: minio.events.lake}}\n"
    )

    assert spec.on.notifications == FilesNotifications(subject="minio.events.lake")
    assert spec_to_json(spec)["on"]["notifications"] == {"subject": "minio.events.lake"}
    # None is left out of the stored spec: triggers applied before notifications existed are unchanged.
    plain = trigger("on:\n  files: {datastore: lake, pattern: '*.csv'}\n")
    assert "notifications" not in spec_to_json(plain)["on"]
    assert spec_from_json("Trigger", spec_to_json(plain)) == plain
    assert problems(
        HEAD + "on:\n  files: {datastore: l, pattern: '*', notifications: {subject: 'a b'}}\n"
    ) == [f"p.yaml:5 on.files.notifications.subject: bad NATS subject 'a b' {SUBJECT_RULE}"]
    assert problems(HEAD + "on:\n  files: {datastore: l, pattern: '*', notifications: {topic: x}}\n") == [
        "p.yaml:5 on.files.notifications.topic: unknown field",
        "p.yaml:5 on.files.notifications.subject: missing",
    ]


def test_nats_source() -> None:
    spec = trigger(
        "on:\n  nats: {subject: 'scoring.requests.>', stream: SCORING, match: {data.kind: full}}\n"
    )

    assert spec.on == NatsSource(subject="scoring.requests.>", stream="SCORING", match={"data.kind": "full"})
    assert spec.source == "nats"


def test_run_source_defaults_to_succeeded() -> None:
    spec = trigger("on:\n  run: {pipeline: training}\n")

    assert spec.on == RunSource(pipeline="training", status=["succeeded"])
    assert spec.source == "run"


def test_exactly_one_source() -> None:
    assert problems(HEAD + "on: {}\n") == ["p.yaml:4 on: needs exactly one of cron, files, nats, run"]
    assert problems(HEAD + "on:\n  cron: '* * * * *'\n  run: {pipeline: training}\n") == [
        "p.yaml:4 on: needs exactly one of cron, files, nats, run (found cron, run)"
    ]


def test_timezone_and_catchup_go_only_with_cron() -> None:
    text = HEAD + "on:\n  run: {pipeline: training}\n  timezone: UTC\n  catchup: none\n"

    assert problems(text) == [
        "p.yaml:6 on.timezone: goes only with cron",
        "p.yaml:7 on.catchup: goes only with cron",
    ]


def test_version_pin_must_be_positive() -> None:
    assert trigger("version: 3\non: {cron: '* * * * *'}\n").version == 3
    assert problems(HEAD + "version: 0\non: {cron: '* * * * *'}\n") == [
        "p.yaml:4 version: expected an integer >= 1"
    ]


def test_unknown_catchup_value() -> None:
    assert problems(HEAD + "on: {cron: '* * * * *', catchup: sometimes}\n") == [
        "p.yaml:4 on.catchup: invalid enum value 'sometimes'"
    ]


# Cron


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("0 2 * *", "expected 5 fields (minute hour day month weekday) or 6 (seconds first), got 4"),
        ("0 0 0 2 * * *", "expected 5 fields (minute hour day month weekday) or 6 (seconds first), got 7"),
        (
            "0 25 * * *",
            "Error validating expression '25': the last value (25) is higher than the maximum value (23)",
        ),
        ("0 x * * *", 'Unrecognized expression "x" for field "hour"'),
        ("0 0 * * 8", "bad day of week '8'"),
        ("0 0 * * fri-mon", "bad day of week range 'fri-mon'"),
        ("0 0 1 * 1", "restrict the day of month or the day of week, not both"),
    ],
)
def test_bad_cron_expressions(expression: str, reason: str) -> None:
    assert problems(HEAD + f"on: {{cron: '{expression}'}}\n") == [
        f"p.yaml:4 on.cron: bad cron expression {expression!r}: {reason}"
    ]


def test_unknown_timezone() -> None:
    assert problems(HEAD + "on:\n  cron: '0 2 * * *'\n  timezone: Mars/Olympus\n") == [
        "p.yaml:6 on.timezone: unknown time zone 'Mars/Olympus'"
    ]


# 2024-01-01 is a Monday.
MONDAY_NOON = datetime(2024, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "next_fire"),
    [
        ("0 2 * * 1", datetime(2024, 1, 8, 2, tzinfo=UTC)),  # crontab 1 = Monday
        ("0 2 * * 0", datetime(2024, 1, 7, 2, tzinfo=UTC)),  # 0 = Sunday
        ("0 2 * * 7", datetime(2024, 1, 7, 2, tzinfo=UTC)),  # 7 = Sunday too
        ("0 2 * * 5-0", datetime(2024, 1, 5, 2, tzinfo=UTC)),  # Friday to Sunday
        ("0 2 * * tue,thu", datetime(2024, 1, 2, 2, tzinfo=UTC)),
        ("30 * * * * *", datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC)),  # six fields: seconds first
    ],
)
def test_cron_reads_weekdays_and_seconds_as_crontab_does(expression: str, next_fire: datetime) -> None:
    fire = cron_trigger(expression, "UTC").get_next_fire_time(None, MONDAY_NOON)

    assert fire == next_fire


def test_cron_is_evaluated_in_its_timezone() -> None:
    fire = cron_trigger("0 2 * * *", "Europe/Madrid").get_next_fire_time(None, MONDAY_NOON)

    assert fire.astimezone(UTC) == datetime(2024, 1, 2, 1, tzinfo=UTC)


# Files, NATS and run options


def test_bad_files_options() -> None:
    text = (
        HEAD
        + "on:\n  files: {datastore: Landing, pattern: ../up, events: [], settle: soon, poll_interval: 0}\n"
    )

    assert problems(text) == [
        "p.yaml:5 on.files.datastore: bad name 'Landing' "
        "(use a-z, 0-9 and '-', starting with a letter or digit, at most 63)",
        "p.yaml:5 on.files.pattern: must be a glob relative to the datastore, without '..'",
        "p.yaml:5 on.files.events: needs at least one event",
        "p.yaml:5 on.files.settle: bad duration 'soon' (use e.g. 30s, 5m, 1h30m)",
        "p.yaml:5 on.files.poll_interval: must be more than 0",
    ]


def test_absolute_file_pattern() -> None:
    assert problems(HEAD + "on:\n  files: {datastore: landing, pattern: /data/*.csv}\n") == [
        "p.yaml:5 on.files.pattern: must be a glob relative to the datastore, without '..'"
    ]


@pytest.mark.parametrize("subject", ["a..b", "a.>.b", "a b", "a.b*", "", "."])
def test_bad_nats_subjects(subject: str) -> None:
    assert problems(HEAD + f"on:\n  nats: {{subject: '{subject}'}}\n") == [
        f"p.yaml:5 on.nats.subject: bad NATS subject {subject!r} {SUBJECT_RULE}"
    ]


@pytest.mark.parametrize("subject", ["a", "a.*.c", "a.>", "orders.eu-west.new"])
def test_good_nats_subjects(subject: str) -> None:
    assert trigger(f"on:\n  nats: {{subject: '{subject}'}}\n").on.subject == subject


@pytest.mark.parametrize("subject", [">", "*", "*.b", "sluice.agents.*.heartbeat", "_INBOX.>", "$JS.API.>"])
def test_core_nats_subjects_that_may_match_sluices_own_are_refused(subject: str) -> None:
    assert problems(HEAD + f"on:\n  nats: {{subject: '{subject}'}}\n") == [
        f"p.yaml:5 on.nats.subject: subject {subject!r} may match Sluice's or the server's own subjects: "
        "start it with a name of yours"
    ]
    # Through a stream the subject only filters the user's stream.
    assert trigger(f"on:\n  nats: {{subject: '{subject}', stream: S}}\n").on.subject == subject


def test_bad_stream_and_match_field() -> None:
    text = HEAD + "on:\n  nats:\n    subject: x\n    stream: bad stream\n    match: {data..kind: 1}\n"

    assert problems(text) == [
        "p.yaml:7 on.nats.stream: bad JetStream stream name 'bad stream' (use letters, digits, '_' and '-')",
        "p.yaml:8 on.nats.match.data..kind: must be a dotted field path, e.g. data.kind",
    ]


def test_run_source_needs_a_status() -> None:
    assert problems(HEAD + "on:\n  run: {pipeline: training, status: []}\n") == [
        "p.yaml:5 on.run.status: needs at least one status"
    ]


# Params


def test_params_may_hold_event_fields_and_literals() -> None:
    spec = trigger(
        "on: {nats: {subject: x}}\n"
        "params:\n"
        "  date: '${event.data.day}'\n"
        "  msg: '${event.headers.Nats-Msg-Id}'\n"
        "  cost: '$${event.x}'\n"
        "  n: 3\n"
        "  flag: false\n"
    )

    assert spec.params == {
        "date": "${event.data.day}",
        "msg": "${event.headers.Nats-Msg-Id}",
        "cost": "$${event.x}",
        "n": 3,
        "flag": False,
    }


def test_params_refuse_other_namespaces_and_malformed_text() -> None:
    text = HEAD + (
        "on: {cron: '* * * * *'}\nparams:\n  a: '${params.x}'\n  b: '${event}'\n  c: '${event.x'\n  1d: x\n"
    )

    assert problems(text) == [
        "p.yaml:6 params.a: unknown substitution ${params.x} (use ${event.FIELD})",
        "p.yaml:7 params.b: unknown substitution ${event} (use ${event.FIELD})",
        "p.yaml:8 params.c: malformed substitution at '${event.x'",
        "p.yaml:9 params.1d: bad name '1d' (use letters, digits and '_', not starting with a digit)",
    ]


def test_trigger_pipeline_name_is_checked() -> None:
    assert problems("kind: Trigger\nname: t\npipeline: P\non: {cron: '* * * * *'}\n") == [
        "p.yaml:3 pipeline: bad name 'P' (use a-z, 0-9 and '-', starting with a letter or digit, at most 63)"
    ]

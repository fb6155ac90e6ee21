"""The pure parts of plans: a placement narrowing a plan's own copy of an agent's room, and what a
trigger test gives turned into the event its source would make (or refused, naming the field)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.errors import BadRequest, Invalid
from daemon.planning.sample_events import (
    Ignored,
    TestInput,
    check_input,
    cron_event,
    cron_fire,
    file_event,
    finished_run_event,
    message_event,
)
from daemon.rules.placement import Need, Placed, Waiting, place, taken
from runners.protocol import Gpu
from tests.unit.test_placement import GiB, room
from triggers.specs import CronSource, FilesSource, NatsSource, RunSource

CRON = CronSource(cron="0 2 * * *", timezone="Europe/Madrid")


def test_taken_narrows_the_room_so_the_next_step_goes_elsewhere() -> None:
    need = Need(cpu=3, memory=GiB)
    one, two = room("one", cpu=4), room("two", cpu=4, free_cpu=3.5)
    first = place(need, [one, two])
    assert first == Placed("two")
    narrowed = taken(two, need, first.gpus)
    assert (narrowed.free_cpu, narrowed.free_memory) == (0.5, 8 * GiB - GiB)
    assert place(need, [one, narrowed]) == Placed("one")
    assert isinstance(place(need, [taken(one, need, ()), narrowed]), Waiting)


def test_taken_takes_the_placed_gpus() -> None:
    gpus = [Gpu(index=0, name="a", memory=GiB), Gpu(index=1, name="b", memory=GiB)]
    agent = room("g", gpus=gpus)
    assert [gpu.index for gpu in taken(agent, Need(cpu=1, memory=0, gpu=1), (1,)).free_gpus] == [0]


def test_cron_fire_is_the_first_at_or_after_the_time_on_the_trigger_s_clock() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert cron_fire(CRON, "2026-03-01T02:00", now).isoformat() == "2026-03-01T01:00:00+00:00"
    assert cron_fire(CRON, "2026-03-01T02:00:01", now).isoformat() == "2026-03-02T01:00:00+00:00"
    assert cron_fire(CRON, None, now).isoformat() == "2026-01-01T01:00:00+00:00"
    event = cron_event("nightly", CRON, "2026-03-01T01:00:00Z", now)
    assert event.fields == {"scheduled_time": "2026-03-01T02:00:00+01:00", "scheduled_date": "2026-03-01"}


def test_a_bad_time_names_the_field() -> None:
    with pytest.raises(Invalid, match=r"^at: 'soon' is not an ISO 8601 time"):
        cron_fire(CRON, "soon", datetime.now(UTC))
    with pytest.raises(Invalid, match=r"^at: '0001-01-01T00:00:00' is outside the years 1900-9000"):
        cron_fire(CRON, "0001-01-01T00:00:00", datetime.now(UTC))  # in Madrid: before year 1 in UTC


@pytest.mark.parametrize(
    ("on", "given", "message"),
    [
        (CRON, TestInput(file="x"), "file: a cron trigger is tested with 'at'"),
        (FilesSource(datastore="d", pattern="*"), TestInput(), "file: a files trigger's test needs 'file'"),
        (RunSource(pipeline="p"), TestInput(at="now"), "at: a run trigger is tested with 'event'"),
        (CRON, TestInput(subject="s"), "subject: only a nats trigger"),
    ],
)
def test_an_input_the_source_does_not_take_names_the_field(on, given, message) -> None:
    with pytest.raises(BadRequest, match=rf"^{message}"):
        check_input(on, given)
    check_input(CRON, TestInput())  # a cron test may give nothing: the next fire


def test_a_file_event_is_the_one_the_files_source_makes(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("1")
    on = FilesSource(datastore="landing", pattern="in/*.csv")
    event = file_event("t", on, "in/a.csv", str(tmp_path))
    assert event.fields["path"] == "in/a.csv"
    assert event.fields["kind"] == "created"
    assert event.dedupe_key.startswith("in/a.csv:")
    assert isinstance(
        file_event("t", FilesSource(datastore="landing", pattern="*.txt"), "in/a.csv", str(tmp_path)), Ignored
    )
    for outside in ("../x", "/etc/passwd"):
        with pytest.raises(BadRequest, match=r"^file: "):
            file_event("t", on, outside, str(tmp_path))
    with pytest.raises(BadRequest, match=r"^file: there is no file in/b.csv"):
        file_event("t", on, "in/b.csv", str(tmp_path))
    with pytest.raises(BadRequest, match=r"^file: a path must not contain a NUL character"):
        file_event("t", on, "in/a\0.csv", str(tmp_path))


def test_a_message_event_is_matched_as_the_nats_source_matches() -> None:
    on = NatsSource(subject="jobs.>", match={"data.kind": "full"})
    event = message_event("t", on, {"kind": "full", "n": 1}, "jobs.a")
    assert not isinstance(event, Ignored)
    assert event.fields["subject"] == "jobs.a"
    assert event.fields["data"] == {"kind": "full", "n": 1}
    assert isinstance(message_event("t", on, {"kind": "part"}, None), Ignored)


def test_a_run_event_follows_the_run_trigger_s_pipeline_and_statuses() -> None:
    on = RunSource(pipeline="training", status=["succeeded"])
    event = finished_run_event("t", on, {"params": {"a": 1}})
    assert not isinstance(event, Ignored)
    assert event.fields["run"]["pipeline"] == "training"
    assert event.fields["run"]["params"] == {"a": 1}
    assert isinstance(finished_run_event("t", on, {"status": "failed"}), Ignored)
    with pytest.raises(BadRequest, match=r"^event: "):
        finished_run_event("t", on, [1])

"""The pure parts of backfills: ranges as written, cron fires across DST in Europe/Madrid, resuming
from a position, files in a range and their batch windows, and the allowance of active runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from daemon.documents.specs import Concurrency
from daemon.errors import Invalid
from daemon.rules import backfills as rules
from daemon.rules.admission import Slots
from daemon.rules.instants import parse_instant
from triggers.cronheap import fire_event
from triggers.cronplan import Schedule

MADRID = ZoneInfo("Europe/Madrid")


def test_times_are_read_with_their_offset_or_in_the_trigger_zone() -> None:
    assert parse_instant("2024-03-31", MADRID, "from") == datetime(2024, 3, 30, 23, tzinfo=UTC)
    assert parse_instant("2024-03-31T12:00:00+00:00", MADRID, "from") == datetime(2024, 3, 31, 12, tzinfo=UTC)
    assert parse_instant("2024-07-01T00:00", MADRID, "to") == datetime(2024, 6, 30, 22, tzinfo=UTC)
    with pytest.raises(Invalid, match=r"^to: 'soon'"):
        parse_instant("soon", MADRID, "to")


def test_a_range_must_end_after_it_starts_and_not_after_now() -> None:
    day, now = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)
    rules.check_range(day, day.replace(hour=1), now)
    rules.check_range(day, now, now)
    with pytest.raises(Invalid, match=r"^to:"):
        rules.check_range(day, day, now)
    with pytest.raises(Invalid, match=r"^to: .* later than now"):
        rules.check_range(day, now.replace(second=1), now)


def test_hourly_fires_across_both_madrid_changes_are_the_live_ones() -> None:
    schedule = Schedule("0 * * * *", "Europe/Madrid")
    spring = rules.cron_fires(
        schedule,
        parse_instant("2024-03-31", MADRID, "from"),
        parse_instant("2024-04-01", MADRID, "to"),
        after=None,
        limit=100,
    )
    assert len(spring) == 23  # 02:00 does not exist that day
    autumn_from = parse_instant("2024-10-27", MADRID, "from")
    autumn_to = parse_instant("2024-10-28", MADRID, "to")
    autumn = rules.cron_fires(schedule, autumn_from, autumn_to, after=None, limit=100)
    assert len(autumn) == 25  # 02:00 twice, two distinct instants
    assert rules.count_cron_fires(schedule, autumn_from, autumn_to) == 25
    keys = [fire_event("t", schedule, fire).dedupe_key for fire in autumn]
    assert len(set(keys)) == 25
    assert keys[0] == "2024-10-26T22:00:00+00:00"  # the live source's key: the instant in UTC


def test_a_daily_fixed_time_job_fires_once_on_each_change_day() -> None:
    schedule = Schedule("30 2 * * *", "Europe/Madrid")
    start, end = datetime(2024, 3, 30, tzinfo=UTC), datetime(2024, 4, 2, tzinfo=UTC)
    fires = rules.cron_fires(schedule, start, end, after=None, limit=10)
    assert fires[1] == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)  # at the change, 03:00 CEST
    assert len(fires) == 3


def test_fires_resume_after_the_position_and_come_in_batches() -> None:
    schedule = Schedule("0 * * * *", "UTC")
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 4, tzinfo=UTC)
    first = rules.cron_fires(schedule, start, end, after=None, limit=64)
    assert (len(first), first[0]) == (64, start)  # the range includes its start
    rest = rules.cron_fires(schedule, start, end, after=first[-1], limit=64)
    assert (len(rest), rest[-1]) == (8, datetime(2024, 1, 3, 23, tzinfo=UTC))  # and excludes its end
    assert rules.cron_fires(schedule, start, end, after=rest[-1], limit=64) == []


def test_too_many_fires_are_refused() -> None:
    schedule = Schedule("* * * * * *", "UTC")
    with pytest.raises(Invalid, match=r"100,000"):
        rules.count_cron_fires(schedule, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 3, tzinfo=UTC))


def test_files_in_range_in_order_from_a_cursor_and_in_windows() -> None:
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)
    base = int(start.timestamp()) * 10**9
    found = [
        ("b.csv", base + 5, 1),
        ("a.csv", base + 5, 2),
        ("old.csv", base - 1, 3),
        ("c.csv", base + 7 * 10**9, 4),
    ]
    files = rules.files_in_range(found, start, end)
    assert [f.path for f in files] == ["a.csv", "b.csv", "c.csv"]
    assert [f.path for f in rules.files_after(files, files[0].cursor)] == ["b.csv", "c.csv"]
    windows = list(rules.batch_windows(files, start, 5.0))
    assert [(index, [f.path for f in window]) for index, window in windows] == [
        (0, ["a.csv", "b.csv"]),
        (1, ["c.csv"]),
    ]


def test_max_active_defaults_to_one_less_than_the_pipeline_then_four() -> None:
    assert (rules.max_active(2, 9), rules.max_active(None, 9), rules.max_active(None, None)) == (2, 8, 4)
    assert (rules.max_active(None, 2), rules.max_active(None, 1)) == (1, 1)


def test_the_allowance_lets_finished_runs_through_and_stops_at_the_first_refusal() -> None:
    allowance = rules.Allowance(1)
    first, second = uuid.uuid4(), uuid.uuid4()
    assert allowance.take(uuid.uuid4(), finished=True)
    assert allowance.take(first, finished=False)
    assert not allowance.take(second, finished=False)
    assert not allowance.take(uuid.uuid4(), finished=True)  # the position stays a clean prefix
    assert allowance.started == [first]


SKIP_AT_2 = Concurrency(max_active_runs=2, on_limit="skip")


def test_a_deferred_backfill_run_takes_no_slot_and_a_live_one_after_it_runs() -> None:
    slots = Slots({"p": 1})
    full = rules.Allowance(0)
    deferred = rules.take_slot(slots, full, "p", SKIP_AT_2, uuid.uuid4(), finished=False)
    assert (deferred.outcome, deferred.creates) == ("deferred", False)
    assert rules.take_slot(slots, None, "p", SKIP_AT_2, uuid.uuid4(), finished=False).outcome == "run"


@pytest.mark.parametrize("on_limit", ["skip", "queue"])
def test_a_backfill_run_at_the_pipeline_limit_is_deferred_not_skipped_or_held(on_limit: str) -> None:
    limit = Concurrency(max_active_runs=1, on_limit=on_limit)
    slots, allowance = Slots({"p": 1}), rules.Allowance(2)
    verdict = rules.take_slot(slots, allowance, "p", limit, uuid.uuid4(), finished=False)
    assert verdict.outcome == "deferred"
    assert (allowance.free, allowance.started, allowance.refused) == (2, [], True)
    finished = rules.take_slot(slots, rules.Allowance(0), "p", limit, uuid.uuid4(), finished=True)
    assert finished.outcome == "run"  # over as it is made: no slot of either


def test_a_paused_trigger_or_a_disabled_version_defers_a_backfill_event() -> None:
    paused = rules.waits("t", paused=True, pipeline="p", version=1, status="active")
    disabled = rules.waits("t", paused=False, pipeline="p", version=1, status="disabled")
    assert paused is not None
    assert (paused.outcome, "paused" in (paused.reason or "")) == ("deferred", True)
    assert disabled is not None
    assert (disabled.outcome, "disabled" in (disabled.reason or "")) == (
        "deferred",
        True,
    )
    assert rules.waits("t", paused=False, pipeline="p", version=1, status="active") is None


def test_after_a_deferral_a_backfill_offers_only_its_free_slots_until_runs_come_out_finished() -> None:
    pace = rules.Pace()
    assert pace.size(64, 3) == 64
    allowance = rules.Allowance(3)
    for _ in range(3):
        allowance.take(uuid.uuid4(), finished=False)
    pace.after(allowance, 3, deferred=True)
    assert pace.size(64, 2) == 2
    busy = rules.Allowance(2)
    busy.take(uuid.uuid4(), finished=False)
    busy.take(uuid.uuid4(), finished=False)
    pace.after(busy, 2, deferred=False)  # every run took a slot: still narrow
    assert pace.size(64, 1) == 1
    reused = rules.Allowance(1)
    reused.take(uuid.uuid4(), finished=True)
    pace.after(reused, 1, deferred=False)  # a run over as it was made: full batches again
    assert pace.size(64, 1) == 64


def test_times_outside_the_years_taken_are_refused_naming_the_field() -> None:
    with pytest.raises(Invalid, match=r"^from: '0001-01-01' is outside the years 1900-9000"):
        parse_instant("0001-01-01", MADRID, "from")
    with pytest.raises(Invalid, match=r"^to: '9999-12-31T23:59:59' is outside"):
        parse_instant("9999-12-31T23:59:59", MADRID, "to")

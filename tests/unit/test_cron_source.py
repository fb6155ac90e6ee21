"""The cron source's pure planning: next fires (with crontab's DST rules), catch-up, fire events."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from triggers.cron import fire_event
from triggers.cronplan import Schedule, count_fires, newest_fires, plan_catchup


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_fires(schedule: Schedule, after: datetime, hours: int) -> list[str]:
    return [
        schedule.local(fire).isoformat() for fire in schedule.fires(after, after + timedelta(hours=hours))
    ]


def test_next_fire_is_strictly_after_the_instant() -> None:
    daily = Schedule("0 2 * * *", "UTC")
    assert daily.next_after(utc(2026, 11, 22, 12)) == utc(2026, 11, 23, 2)
    assert daily.next_after(utc(2026, 11, 23, 2)) == utc(2026, 11, 24, 2)
    assert daily.next_after(utc(2026, 11, 23, 1, 59, 59, 999_999)) == utc(2026, 11, 23, 2)


def test_six_fields_fire_by_the_second() -> None:
    every_second = Schedule("* * * * * *", "UTC")
    start = utc(2026, 1, 1, 0, 0, 0, 500_000)
    assert list(every_second.fires(start, start + timedelta(seconds=3))) == [
        utc(2026, 1, 1, 0, 0, 1),
        utc(2026, 1, 1, 0, 0, 2),
        utc(2026, 1, 1, 0, 0, 3),
    ]


def test_next_fire_in_the_triggers_zone() -> None:
    madrid = Schedule("0 2 * * *", "Europe/Madrid")
    assert madrid.next_after(utc(2026, 11, 22, 12)) == utc(2026, 11, 23, 1)  # 02:00 CET = 01:00 UTC
    assert madrid.next_after(utc(2026, 7, 1, 12)) == utc(2026, 7, 2, 0)  # 02:00 CEST = 00:00 UTC


def test_crontab_weekdays() -> None:
    sundays = Schedule("0 9 * * 0", "UTC")
    assert sundays.next_after(utc(2026, 11, 23)) == utc(2026, 11, 29, 9)  # 2026-11-29 is a Sunday


def test_no_fire_for_an_impossible_date() -> None:
    assert Schedule("0 0 30 2 *", "UTC").next_after(utc(2026, 1, 1)) is None


@pytest.mark.parametrize(
    ("expr", "timezone"), [("61 * * * *", "UTC"), ("* * * *", "UTC"), ("0 2 * * *", "Mars/Olympus")]
)
def test_invalid_schedules_are_refused(expr: str, timezone: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        Schedule(expr, timezone)


# -- DST: Europe/Madrid springs forward 2026-03-29 02:00 → 03:00 and falls back 2026-10-25 03:00 → 02:00;
#    America/New_York springs forward 2026-03-08 02:00 → 03:00 and falls back 2026-11-01 02:00 → 01:00.


def test_spring_forward_fixed_time_job_fires_once_at_the_change() -> None:
    nightly = Schedule("30 2 * * *", "Europe/Madrid")
    assert local_fires(nightly, utc(2026, 3, 27, 12), 72) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that night: at the change, once
        "2026-03-30T02:30:00+02:00",
    ]


def test_spring_forward_fixed_time_job_in_new_york() -> None:
    nightly = Schedule("30 2 * * *", "America/New_York")
    fires = list(nightly.fires(utc(2026, 3, 7, 12), utc(2026, 3, 9, 12)))
    assert [nightly.local(fire).isoformat() for fire in fires] == [
        "2026-03-08T03:00:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


def test_spring_forward_wildcard_job_keeps_its_rhythm() -> None:
    half_hourly = Schedule("*/30 * * * *", "Europe/Madrid")
    fires = list(half_hourly.fires(utc(2026, 3, 28, 22, 45), utc(2026, 3, 29, 2)))
    assert [half_hourly.local(fire).strftime("%H:%M%z") for fire in fires] == [
        "00:00+0100",
        "00:30+0100",
        "01:00+0100",
        "01:30+0100",
        "03:00+0200",  # 02:00 and 02:30 do not exist; in real time this is 30 minutes after 01:30
        "03:30+0200",
        "04:00+0200",
    ]
    assert all(later - earlier == timedelta(minutes=30) for earlier, later in itertools.pairwise(fires))


def test_fall_back_fixed_time_job_fires_once() -> None:
    nightly = Schedule("30 2 * * *", "Europe/Madrid")
    assert local_fires(nightly, utc(2026, 10, 23, 12), 72) == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # the first pass; 02:30+01:00 an hour later does not fire again
        "2026-10-26T02:30:00+01:00",
    ]


def test_fall_back_fixed_time_job_in_new_york() -> None:
    nightly = Schedule("30 1 * * *", "America/New_York")
    assert local_fires(nightly, utc(2026, 10, 31, 12), 48) == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


def test_fall_back_wildcard_job_fires_per_distinct_instant_with_distinct_keys() -> None:
    half_hourly = Schedule("*/30 * * * *", "Europe/Madrid")
    fires = list(half_hourly.fires(utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2)))
    assert [half_hourly.local(fire).strftime("%H:%M%z") for fire in fires] == [
        "02:00+0200",
        "02:30+0200",
        "02:00+0100",  # the repeated hour, once more: other instants
        "02:30+0100",
        "03:00+0100",
    ]
    keys = [fire_event("t", half_hourly, fire).dedupe_key for fire in fires]
    assert len(set(keys)) == len(keys)
    assert keys[0] == "2026-10-25T00:00:00+00:00"
    assert keys[2] == "2026-10-25T01:00:00+00:00"


def test_fire_event_keys_and_fields() -> None:
    nightly = Schedule("0 3 * * *", "Europe/Madrid")
    fire = nightly.next_after(utc(2026, 11, 22, 12))
    assert fire is not None
    event = fire_event("nightly-scoring", nightly, fire)
    assert event.trigger == "nightly-scoring"
    assert event.dedupe_key == "2026-11-23T02:00:00+00:00"
    assert event.fields == {"scheduled_time": "2026-11-23T03:00:00+01:00", "scheduled_date": "2026-11-23"}


def test_scheduled_date_is_the_local_date() -> None:
    late = Schedule("30 0 * * *", "Europe/Madrid")
    fire = late.next_after(utc(2026, 7, 1, 12))
    assert fire == utc(2026, 7, 1, 22, 30)  # the UTC date is the day before
    assert fire_event("t", late, fire).fields["scheduled_date"] == "2026-07-02"


# -- catch-up


NOW = utc(2026, 5, 4, 12, 0, 0, 400_000)
EVERY_SECOND = Schedule("* * * * * *", "UTC")


def test_catchup_none_fires_nothing_but_counts() -> None:
    plan = plan_catchup(EVERY_SECOND, "none", NOW - timedelta(seconds=5), NOW)
    assert (plan.fire, plan.missed, plan.missed_exact) == ([], 5, True)


def test_catchup_latest_fires_the_newest_missed_one() -> None:
    plan = plan_catchup(EVERY_SECOND, "latest", NOW - timedelta(seconds=5), NOW)
    assert plan.fire == [utc(2026, 5, 4, 12)]
    assert plan.missed == 5


def test_catchup_all_fires_each_oldest_first() -> None:
    plan = plan_catchup(EVERY_SECOND, "all", NOW - timedelta(seconds=5), NOW)
    assert plan.fire == [utc(2026, 5, 4, 11, 59, 56 + i) for i in range(4)] + [utc(2026, 5, 4, 12)]


@pytest.mark.parametrize("policy", ["none", "latest", "all"])
def test_catchup_with_nothing_missed(policy: str) -> None:
    hourly = Schedule("0 * * * *", "UTC")
    plan = plan_catchup(hourly, policy, utc(2026, 5, 4, 12), NOW)  # type: ignore[arg-type]
    assert (plan.fire, plan.missed) == ([], 0)


def test_catchup_all_is_capped_at_the_newest() -> None:
    plan = plan_catchup(EVERY_SECOND, "all", NOW - timedelta(hours=1), NOW, limit=10)
    assert plan.fire == [utc(2026, 5, 4, 11, 59, 51 + i) for i in range(9)] + [utc(2026, 5, 4, 12)]
    assert (plan.missed, plan.skipped) == (3600, 3590)


def test_missed_fires_are_counted_up_to_a_cap() -> None:
    assert count_fires(EVERY_SECOND, NOW - timedelta(hours=1), NOW, cap=100) == (100, False)
    assert count_fires(EVERY_SECOND, NOW - timedelta(seconds=100), NOW, cap=100) == (100, True)


def test_catchup_latest_after_a_long_gap_skips_the_walk() -> None:
    # A month of every-second fires: found from the newest end, not by walking 2.6 million fires.
    plan = plan_catchup(EVERY_SECOND, "latest", NOW - timedelta(days=30), NOW)
    assert plan.fire == [utc(2026, 5, 4, 12)]
    assert not plan.missed_exact


def test_newest_fires_of_a_schedule_with_dense_and_empty_stretches() -> None:
    # every second during hour 2 only: most windows are empty, one is dense
    schedule = Schedule("* * 2 * * *", "UTC")
    after, until = utc(2026, 5, 1), utc(2026, 5, 3, 12)
    every = list(schedule.fires(after, until))
    for limit in (1, 7, 500, 4000, 10_000):
        assert newest_fires(schedule, after, until, limit) == every[-limit:]


def test_catchup_across_spring_forward_uses_the_dst_rules() -> None:
    nightly = Schedule("30 2 * * *", "Europe/Madrid")
    plan = plan_catchup(nightly, "all", utc(2026, 3, 27, 12), utc(2026, 3, 30, 12))
    assert [nightly.local(fire).isoformat() for fire in plan.fire] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]

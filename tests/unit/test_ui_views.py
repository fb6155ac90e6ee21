"""How the pages show times, durations, sizes and statuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from daemon.ui.views import ago, duration, share, size, span, symbol, when

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.42, "0.4 s"),
        (42, "42 s"),
        (185, "3 min 5 s"),
        (7200, "2 h"),
        (7860, "2 h 11 min"),
        (277200, "3 d 5 h"),
    ],
)
def test_spans_read_like_people_say_them(seconds: float, text: str) -> None:
    assert span(seconds) == text


def test_ago_says_past_and_future() -> None:
    assert ago(NOW - timedelta(minutes=3), now=NOW) == "3 min ago"
    assert ago(NOW + timedelta(hours=2), now=NOW) == "in 2 h"
    assert ago(None) == "never"
    assert ago((NOW - timedelta(seconds=5)).isoformat(), now=NOW) == "5.0 s ago"


def test_times_are_shown_in_the_zone_asked_for_and_labelled_with_it() -> None:
    # 00:30 UTC on the night Europe/Madrid moves to summer time (at 01:00 UTC): still UTC+1.
    assert when(NOW, "Europe/Madrid") == "2026-03-29 01:30:00 Europe/Madrid"
    assert when(NOW + timedelta(hours=1), "Europe/Madrid") == "2026-03-29 03:30:00 Europe/Madrid"
    assert when(NOW) == "2026-03-29 00:30:00 UTC"
    assert when(NOW, "Not/AZone") == "2026-03-29 00:30:00 UTC"
    assert when(None) == ""


def test_durations_run_until_now_while_they_go_on() -> None:
    assert duration(NOW, NOW + timedelta(seconds=90)) == "1 min 30 s"
    assert duration(None, NOW) == ""
    assert duration(datetime.now(UTC) - timedelta(seconds=3)).endswith(" s")


def test_sizes_and_shares() -> None:
    assert size(512) == "512 B"
    assert size(1536 * 1024**2) == "1.5 GiB"
    assert size(None) == ""
    assert share(1.5, 2.0) == 75
    assert share(3, 2) == 100
    assert share(1, 0) == 0


def test_every_status_has_a_symbol_besides_its_colour() -> None:
    assert symbol("succeeded") == "✓"
    assert symbol("failed") == "✗"
    assert symbol("reused") == "↺"
    assert symbol("something-new") == "·"

"""Whether a run is made, held or refused: the rule every way in shares (trigger events, manual runs,
admissions of held runs), without I/O."""

from __future__ import annotations

import pytest

from daemon.documents.specs import Concurrency
from daemon.errors import Conflict, Invalid
from daemon.rules.admission import HELD, RUN, Slots, counted, refuse_event, refuse_version

QUEUE_ONE = Concurrency(max_active_runs=1)
SKIP_TWO = Concurrency(max_active_runs=2, on_limit="skip")


def test_a_pipeline_nobody_limits_is_not_counted_and_every_run_goes_ahead() -> None:
    assert counted([("nightly", None), ("scoring", QUEUE_ONE)]) == {"scoring"}
    slots = Slots({})
    assert [slots.take("nightly", None, finished=False) for _ in range(3)] == [RUN] * 3


def test_runs_beyond_a_queue_limit_are_held_in_order() -> None:
    slots = Slots({"scoring": 0})
    verdicts = [slots.take("scoring", QUEUE_ONE, finished=False) for _ in range(3)]
    assert verdicts == [RUN, HELD, HELD]
    assert not slots.free("scoring", QUEUE_ONE)


def test_a_run_at_a_skip_limit_is_skipped_with_the_count_and_the_limit() -> None:
    slots = Slots({"scoring": 2})
    verdict = slots.take("scoring", SKIP_TWO, finished=False)
    assert verdict.outcome == "skipped"
    assert isinstance(verdict.error, Conflict)
    assert verdict.reason == (
        "pipeline scoring already has 2 active runs (concurrency.max_active_runs 2, on_limit skip): "
        "no run created"
    )
    assert not verdict.creates


def test_a_run_that_reuses_every_step_takes_no_slot_and_is_never_held() -> None:
    slots = Slots({"scoring": 1})
    assert slots.take("scoring", QUEUE_ONE, finished=True) == RUN
    slots = Slots({"scoring": 0})
    assert slots.take("scoring", QUEUE_ONE, finished=True) == RUN
    assert slots.take("scoring", QUEUE_ONE, finished=False) == RUN  # the slot was still free


def test_a_run_of_a_version_without_a_limit_counts_against_the_pipelines_limit() -> None:
    """Versions of a pipeline share what the limit protects: the rule for every way in."""
    slots = Slots({"scoring": 0})
    assert slots.take("scoring", None, finished=False) == RUN  # version 2: no limit
    assert slots.take("scoring", QUEUE_ONE, finished=False) == HELD  # version 1: one at a time
    assert slots.free("scoring", None)


def test_the_database_count_is_where_a_batch_starts() -> None:
    slots = Slots({"scoring": 1, "other": 0})
    assert slots.take("scoring", SKIP_TWO, finished=False) == RUN
    assert slots.take("scoring", SKIP_TWO, finished=False).outcome == "skipped"
    assert slots.take("other", SKIP_TWO, finished=False) == RUN


@pytest.mark.parametrize(
    ("unstorable", "paused", "outcome", "reason"),
    [
        (False, False, None, None),
        (False, True, "skipped", "trigger nightly is paused"),
        (True, True, "rejected", "the event holds text that cannot be stored"),
    ],
)
def test_an_event_is_refused_for_unstorable_text_first_then_a_paused_trigger(
    unstorable: bool, paused: bool, outcome: str | None, reason: str | None
) -> None:
    verdict = refuse_event("nightly", unstorable=unstorable, paused=paused)
    if outcome is None:
        assert verdict is None
        return
    assert verdict is not None
    assert verdict.outcome == outcome
    assert verdict.reason is not None
    assert verdict.reason.startswith(reason or "")
    assert isinstance(verdict.error, Invalid if unstorable else Conflict)


def test_only_a_disabled_version_is_refused() -> None:
    assert refuse_version("scoring", 3, "active") is None
    assert refuse_version("scoring", 3, "deprecated") is None
    verdict = refuse_version("scoring", 3, "disabled")
    assert verdict is not None
    assert verdict.outcome == "rejected"
    assert isinstance(verdict.error, Conflict)
    assert verdict.reason == "version 3 of scoring is disabled and takes no new runs"

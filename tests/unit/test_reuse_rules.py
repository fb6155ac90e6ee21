"""The reuse decision and its explanation, and a new run's first step statuses, without I/O."""

from __future__ import annotations

import uuid

import pytest

from daemon.documents.specs import StepSpec
from daemon.rules.reuse import Earlier, Origin, decide, first_statuses, reused_links

STEP = StepSpec(name="score", command=["score"])
EARLIER_RUN = uuid.UUID(int=7)
ORIGIN = Origin(41, EARLIER_RUN, "score", {"out": "/data/runs/7/score/out"})
NOW = {"code": "c2", "params": "p1"}


def decision(**facts):
    facts = {
        "fingerprint": "f",
        "components": NOW,
        "run_reuse": True,
        "candidate": None,
        "present": False,
        "earlier": None,
        "blind": [],
    } | facts
    return decide(facts.pop("step", STEP), **facts)


def test_a_match_whose_outputs_exist_is_reused_and_says_from_where() -> None:
    made = decision(candidate=ORIGIN, present=True)
    assert made.origin == ORIGIN
    assert made.explanation == {
        "outcome": "reused",
        "reused_from": {"run_id": str(EARLIER_RUN), "step": "score", "step_run_id": 41},
        "changed": [],
        "reason": f"nothing changed: the outputs of step score of run {EARLIER_RUN}",
    }


def test_a_match_whose_outputs_are_gone_runs_and_says_so() -> None:
    made = decision(candidate=ORIGIN, present=False)
    assert made.origin is None
    assert made.explanation["outcome"] == "executed"
    assert made.explanation["reason"] == (
        f"unchanged since run {EARLIER_RUN}, but the outputs of its step score are gone"
    )


@pytest.mark.parametrize(
    ("facts", "outcome", "reason"),
    [
        ({"run_reuse": False}, "off", "the run asked for no reuse (--no-reuse)"),
        ({"step": StepSpec(name="score", command=["x"], reuse=False)}, "off", "reuse: false on this step"),
        (
            {"blind": ["nothing at /d/x"]},
            "executed",
            "the daemon cannot see an input's data: nothing at /d/x",
        ),
        ({}, "executed", "first run of this step"),
    ],
)
def test_why_a_step_without_a_match_runs(facts: dict, outcome: str, reason: str) -> None:
    made = decision(**facts)
    assert made.origin is None
    assert (made.explanation["outcome"], made.explanation["reason"]) == (outcome, reason)


def test_a_step_that_runs_names_what_changed_since_the_previous_run() -> None:
    earlier = Earlier(EARLIER_RUN, "succeeded", {"code": "c1", "params": "p1"})
    made = decision(earlier=earlier)
    assert made.explanation["changed"] == ["code"]
    assert made.explanation["reason"] == f"changed since run {EARLIER_RUN}: code"
    unchanged = decision(earlier=Earlier(EARLIER_RUN, "failed", dict(NOW)))
    assert unchanged.explanation["reason"] == (
        f"unchanged since run {EARLIER_RUN}, which has not succeeded (step failed)"
    )


GRAPH = {"prep": (), "score": ("prep",), "report": ("score",)}


def test_reused_steps_are_final_and_ready_what_waited_only_for_them() -> None:
    decisions = {
        "prep": decision(candidate=ORIGIN, present=True),
        "score": decision(),
        "report": decision(),
    }
    assert first_statuses(GRAPH, decisions, held=False) == {
        "prep": "reused",
        "score": "ready",
        "report": "pending",
    }
    assert reused_links(decisions) == {"prep": (str(EARLIER_RUN), "score")}


def test_a_held_run_waits_whole_and_reuses_nothing_yet() -> None:
    decisions = dict.fromkeys(GRAPH, decision(candidate=ORIGIN, present=True))
    assert first_statuses(GRAPH, decisions, held=True) == dict.fromkeys(GRAPH, "pending")
    assert first_statuses(GRAPH, decisions, held=False) == dict.fromkeys(GRAPH, "reused")

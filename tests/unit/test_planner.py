"""The run state machine over the step graph, without I/O."""

from __future__ import annotations

from daemon.rules.states import advance, after_attempt, backoff, downstream, run_outcome, settle

# prep → left, prep → right, left + right → report
GRAPH = {"prep": (), "left": ("prep",), "right": ("prep",), "report": ("left", "right")}


def test_in_a_new_run_roots_are_ready_the_rest_pending() -> None:
    assert settle(dict.fromkeys(GRAPH, "pending"), GRAPH) == {"prep": "ready"}


def test_reused_steps_ready_what_waited_only_for_them() -> None:
    statuses = {"prep": "reused", "left": "reused", "right": "pending", "report": "pending"}
    assert settle(statuses, GRAPH) == {"right": "ready"}


def test_success_readies_what_waited_only_for_it() -> None:
    statuses = {"prep": "succeeded", "left": "pending", "right": "pending", "report": "pending"}
    assert settle(statuses, GRAPH) == {"left": "ready", "right": "ready"}
    statuses = {"prep": "succeeded", "left": "succeeded", "right": "running", "report": "pending"}
    assert settle(statuses, GRAPH) == {}


def test_failure_skips_everything_downstream_transitively() -> None:
    statuses = {"prep": "failed", "left": "pending", "right": "pending", "report": "pending"}
    assert settle(statuses, GRAPH) == {"left": "skipped", "right": "skipped", "report": "skipped"}
    assert downstream(GRAPH, "prep") == ["left", "right", "report"]


def test_run_fails_only_once_nothing_runs() -> None:
    graph = {"a": (), "b": (), "c": ("a",)}
    plan = advance({"a": "failed", "b": "running", "c": "pending"}, graph, run_status="running")
    assert plan.changes == {"c": "skipped"}
    assert plan.outcome is None  # b still runs
    plan = advance({"a": "failed", "b": "succeeded", "c": "skipped"}, graph, run_status="running")
    assert plan.outcome == "failed"


def test_run_succeeds_when_every_step_succeeded() -> None:
    assert run_outcome({"a": "succeeded", "b": "reused"}) == "succeeded"
    assert run_outcome({"a": "succeeded", "b": "ready"}) is None


def test_cancelled_run_cancels_what_did_not_start() -> None:
    plan = advance(
        {"a": "succeeded", "b": "pending", "c": "ready", "d": "running"}, {}, run_status="cancelled"
    )
    assert plan.changes == {"b": "cancelled", "c": "cancelled"}
    assert plan.outcome is None


def test_retries_with_backoff_then_fail_for_good() -> None:
    first = after_attempt("failed", failures_before=0, retries=2, run_cancelled=False, backoff_base_s=1.0)
    assert (first.status, first.counts_as_failure, first.retry_in_s) == ("ready", True, 1.0)
    second = after_attempt("failed", failures_before=1, retries=2, run_cancelled=False, backoff_base_s=1.0)
    assert second.retry_in_s == 2.0
    third = after_attempt("failed", failures_before=2, retries=2, run_cancelled=False, backoff_base_s=1.0)
    assert third.status == "failed"
    assert after_attempt(
        "succeeded", failures_before=5, retries=0, run_cancelled=True, backoff_base_s=1
    ).status == ("succeeded")


def test_an_attempt_cancelled_by_its_run_is_not_retried() -> None:
    decision = after_attempt(
        "cancelled", failures_before=0, retries=3, run_cancelled=True, backoff_base_s=1.0
    )
    assert decision.status == "cancelled"
    assert not decision.counts_as_failure
    # Cancelled by the agent on its own (the run goes on): a failure like any other.
    decision = after_attempt(
        "cancelled", failures_before=0, retries=3, run_cancelled=False, backoff_base_s=1.0
    )
    assert decision.status == "ready"


def test_backoff_doubles_up_to_a_minute() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(20) == 60


def test_an_attempt_lost_by_its_stopping_agent_runs_again_at_once_without_a_retry() -> None:
    decision = after_attempt("lost", failures_before=0, retries=0, run_cancelled=False, backoff_base_s=1.0)
    assert (decision.status, decision.counts_as_failure, decision.retry_in_s) == ("ready", False, None)
    cancelled = after_attempt("lost", failures_before=0, retries=0, run_cancelled=True, backoff_base_s=1.0)
    assert cancelled.status == "cancelled"

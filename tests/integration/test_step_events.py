"""Step events applied in batches, against real PostgreSQL and NATS: what one batch may hold
(duplicates, both events of one attempt, events that change nothing or cannot be applied)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import nats
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from daemon.dispatch.step_events import StepEvents
from daemon.dispatch.transitions import Reported
from kit.streams import STEPS_ACK_WAIT_S, STEPS_CONSUMER, STEPS_MAX_ACK_PENDING, ensure_steps_stream
from kit.subjects import STEPS_STREAM
from runners.protocol import Assignment, StepFinished, StepStarted
from tests.integration.fake_agent import FAST, FakeAgent, Harness, Outcome, harness

ONE_STEP = "kind: Pipeline\nname: once\nsteps:\n  - name: only\n    command: [x]\n"


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(ONE_STEP)
        yield system


def finished(assignment: Assignment, agent_id: str = "a1", **fields) -> Reported:
    """The attempt's StepFinished as agent ``agent_id``'s subject carried it."""
    values = {"status": "succeeded", "exit_code": 0, "started_at": time.time(), "finished_at": time.time()}
    return Reported(agent_id, StepFinished(attempt_id=assignment.attempt_id, **(values | fields)))


async def running(system: Harness, agent: FakeAgent) -> tuple[str, Assignment]:
    """A run whose only step runs on ``agent`` (which holds it), and its assignment."""
    run_id = (await system.start_run("once"))["run_id"]
    await system.wait_step(run_id, "only", lambda step: step["status"] == "running")
    return run_id, next(a for a in agent.assignments if a.run_id == run_id)


async def test_a_duplicate_inside_one_batch_changes_nothing(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    run_id, assignment = await running(system, agent)
    event = finished(assignment)

    applied = await system.scheduler.transitions.apply_events([event, event])

    assert applied.changed == [True, False]
    run = await system.get_run(run_id)
    assert run["status"] == "succeeded"
    (attempt,) = run["steps"][0]["attempts"]
    assert attempt["status"] == "succeeded"


async def test_started_and_finished_of_one_attempt_in_one_batch(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))

    async def keep(event) -> None:  # the agent's events reach the daemon only through this test
        pass

    agent.publish = keep  # type: ignore[method-assign]
    run_id = (await system.start_run("once"))["run_id"]
    await system.wait_for(lambda: agent.assignments, what="the assignment")
    (assignment,) = agent.assignments
    assert (await system.get_run(run_id))["steps"][0]["status"] == "dispatched"
    started = Reported("a1", StepStarted(attempt_id=assignment.attempt_id, started_at=time.time()))

    applied = await system.scheduler.transitions.apply_events([started, finished(assignment, exit_code=0)])

    assert applied.changed == [True, True]
    run = await system.get_run(run_id)
    assert run["status"] == "succeeded"
    (attempt,) = run["steps"][0]["attempts"]
    assert attempt["status"] == "succeeded"
    assert attempt["started_at"] is not None


async def test_events_that_change_nothing_do_not_hold_back_the_others(system: Harness) -> None:
    agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
    first_id, first = await running(system, agent)
    second_id, second = await running(system, agent)
    unknown = Reported("a1", StepFinished(attempt_id=10**9, status="succeeded", finished_at=time.time()))
    elsewhere = finished(first, agent_id="a2")  # not the agent the attempt runs on
    failed = finished(second, status="failed", exit_code=3)

    applied = await system.scheduler.transitions.apply_events([unknown, elsewhere, finished(first), failed])

    assert applied.changed == [False, False, True, True]
    assert (await system.get_run(first_id))["status"] == "succeeded"
    run = await system.get_run(second_id)
    assert run["status"] == "failed"
    assert run["steps"][0]["attempts"][0]["error"] == "exit code 3"


class Delivered:
    """A step event as the consumer receives it from JetStream, recording how it was settled."""

    def __init__(self, subject: str, data: bytes, deliveries: int = 1) -> None:
        self.subject, self.data, self.settled = subject, data, None
        self.metadata = SimpleNamespace(num_delivered=deliveries)

    async def ack(self) -> None:
        self.settled = "ack"

    async def nak(self, delay: float | None = None) -> None:
        self.settled = "nak"

    async def term(self) -> None:
        self.settled = "term"


async def test_an_event_that_cannot_be_applied_does_not_poison_its_batch(
    pool, nats_url: str, tmp_path: Path
) -> None:
    # Rendering the failures' tracebacks on a console takes longer than FAST's heartbeat timeout.
    patient = dataclasses.replace(FAST, heartbeat_timeout_s=30.0, unlisted_grace_s=30.0)
    async with harness(pool, nats_url, tmp_path, patient) as system:
        await system.apply(ONE_STEP)
        agent = await system.agent("a1", behaviour=lambda a: Outcome(hold=True))
        bad_id, bad = await running(system, agent)
        good_id, good = await running(system, agent)
        await _poisoned_batch(system, bad_id, bad, good_id, good)


async def _poisoned_batch(
    system: Harness, bad_id: str, bad: Assignment, good_id: str, good: Assignment
) -> None:
    messages = [
        # An exit code PostgreSQL cannot store: the whole batch's transaction fails.
        Delivered(
            f"sluice.steps.a1.{bad.attempt_id}.finished", finished(bad, exit_code=2**40).event.encode()
        ),
        # The same event, on its last delivery: given up, so it cannot hold back the others for ever.
        Delivered(
            f"sluice.steps.a1.{bad.attempt_id}.finished", finished(bad, exit_code=2**40).event.encode(), 5
        ),
        Delivered(f"sluice.steps.a1.{good.attempt_id}.finished", finished(good).event.encode()),
        Delivered(f"sluice.steps.a1.{good.attempt_id}.finished", b"not json"),
        Delivered(f"sluice.steps.a1.{good.attempt_id}.paused", b"{}"),
        Delivered(f"sluice.steps.a1.{bad.attempt_id}.finished", finished(good).event.encode()),
    ]

    await system.scheduler.step_events.handle(messages)  # type: ignore[arg-type]

    assert [message.settled for message in messages] == ["nak", "term", "ack", "term", "term", "term"]
    assert (await system.get_run(good_id))["status"] == "succeeded"
    run = await system.get_run(bad_id)
    assert run["status"] == "running"
    assert run["steps"][0]["attempts"][0]["status"] == "running"


async def test_a_consumer_from_an_earlier_release_takes_todays_ack_wait(
    pool, nats_url: str, tmp_path: Path
) -> None:
    """A daemon that died holding events makes its successor wait one ack wait: 5 s, not the 30 s
    an existing consumer was made with."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(STEPS_STREAM)
        await ensure_steps_stream(js)
        await js.add_consumer(
            STEPS_STREAM,
            config=ConsumerConfig(
                durable_name=STEPS_CONSUMER,
                deliver_subject="_INBOX.old",  # where any service could listen
                deliver_group=STEPS_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_ack_pending=65536,
            ),
        )
        async with harness(pool, nats_url, tmp_path) as system:
            await system.apply(ONE_STEP)
            info = await js.consumer_info(STEPS_STREAM, STEPS_CONSUMER)
            assert (info.config.ack_wait, info.config.max_ack_pending) == (
                STEPS_ACK_WAIT_S,
                STEPS_MAX_ACK_PENDING,
            )
            assert info.config.deliver_subject == "sluice.inbox.daemon.step-events"
            agent = await system.agent("a1")
            run = await system.start_run("once")
            await system.wait_run(run["run_id"], "succeeded")  # events flow on the new subject
            assert agent.assignments
    finally:
        await nc.close()


async def test_daemons_starting_together_share_the_consumers_events(pool, nats_url: str) -> None:
    """Each makes the consumer when none exists: both make the same one, and both receive (each
    with a subject of its own, the last one's creation took the events from the other)."""
    ncs = [await nats.connect(nats_url) for _ in range(2)]
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await ncs[0].jetstream().delete_stream(STEPS_STREAM)
        daemons = [StepEvents(pool=pool, nc=nc, transitions=None, cancels=None) for nc in ncs]

        await asyncio.gather(*(daemon.start() for daemon in daemons))

        info = await ncs[0].jetstream().consumer_info(STEPS_STREAM, STEPS_CONSUMER)
        assert {daemon._sub.subject for daemon in daemons} == {info.config.deliver_subject}
        await asyncio.gather(*(daemon.stop() for daemon in daemons))
    finally:
        for nc in ncs:
            await nc.close()

"""The daemon's event sink against real PostgreSQL and NATS: each event of a trigger creates at most
one run, with params templated from its fields, or is recorded with why not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import NotFound, Unavailable
from daemon.intake.events import Backfilled, Deferred
from daemon.rules.backfills import Allowance
from tests.integration.fake_agent import Harness, Outcome, harness
from triggers.base import EventResult, TriggerEvent

PIPELINES = """
kind: Pipeline
name: upstream
steps:
  - name: only
    command: ["true"]
---
kind: Pipeline
name: scoring
params:
  date: {type: string}
  rows: {type: integer, default: 10}
steps:
  - name: score
    command: [score, "${params.date}", "${params.rows}"]
"""

TRIGGER = """
kind: Trigger
name: {name}
pipeline: scoring
{pin}
on:
  run: {{pipeline: upstream, status: [succeeded]}}
params:
  date: "${{event.data.date}}"
  rows: "${{event.data.rows}}"
"""


@pytest.fixture
async def system(pool, nats_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(pool, nats_url, tmp_path) as system:
        await system.apply(PIPELINES)
        yield system


async def add_trigger(system: Harness, name: str = "t1", pin: str = "") -> None:
    await system.apply(TRIGGER.format(name=name, pin=pin))


async def send(system: Harness, key: str, trigger: str = "t1", **data: Any) -> EventResult:
    assert system.scheduler is not None
    assert system.scheduler.triggering is not None
    data.setdefault("rows", 5)
    return await system.scheduler.triggering.sink(
        TriggerEvent(trigger=trigger, dedupe_key=key, fields={"data": data})
    )


async def events_of(system: Harness, trigger: str) -> list[dict]:
    assert system.client is not None
    response = await system.client.get(f"/api/v1/triggers/{trigger}/events")
    assert response.status == 200, await response.text()
    return (await response.json())["items"]


async def count_runs(system: Harness) -> int:
    return await system.pool.fetchval("SELECT count(*) FROM runs WHERE pipeline = 'scoring'")


async def test_one_event_makes_one_run_with_params_from_its_fields(system: Harness) -> None:
    agent = await system.agent("a1")
    await add_trigger(system)
    result = await send(system, "k1", date="2024-05-01", rows="42")
    assert result.outcome == "run"
    assert result.run_id is not None
    assert result.reason is None

    run = await system.wait_run(result.run_id, "succeeded")
    assert run["params"] == {"date": "2024-05-01", "rows": 42}
    assert run["trigger"] == "t1"
    assert run["event_id"] == result.event_id
    assert run["resolution"] == "default"
    assert agent.assignments[0].argv == ["score", "2024-05-01", "42"]

    [event] = await events_of(system, "t1")
    assert event["id"] == result.event_id
    assert event["outcome"] == "run"
    assert event["run_id"] == result.run_id
    assert event["reason"] is None
    assert event["dedupe_key"] == "k1"
    fields = event["fields"]
    assert fields["id"] == result.event_id
    assert fields["trigger"] == "t1"
    assert fields["time"]
    assert fields["data"] == {"date": "2024-05-01", "rows": "42"}
    trigger = await (await system.client.get("/api/v1/triggers/t1")).json()
    assert trigger["last_event_at"] is not None
    assert trigger["status"]["active"] is True


async def test_same_dedupe_key_twice_gives_one_run(system: Harness) -> None:
    await add_trigger(system)
    first = await send(system, "k1", date="2024-05-01")
    second = await send(system, "k1", date="2024-05-02")
    assert first.outcome == "run"
    assert second.outcome == "duplicate"
    assert second.run_id == first.run_id
    assert second.event_id == first.event_id
    assert await count_runs(system) == 1
    assert len(await events_of(system, "t1")) == 1


async def test_concurrent_duplicates_race_to_exactly_one_run(system: Harness) -> None:
    await add_trigger(system)
    results = await asyncio.gather(*(send(system, "same", date="2024-05-01") for _ in range(20)))
    outcomes = sorted(result.outcome for result in results)
    assert outcomes == ["duplicate"] * 19 + ["run"]
    assert len({result.run_id for result in results}) == 1
    assert await count_runs(system) == 1


async def test_paused_trigger_records_skipped(system: Harness) -> None:
    await add_trigger(system)
    response = await system.client.post("/api/v1/triggers/t1/pause")
    assert response.status == 200
    result = await send(system, "k1", date="2024-05-01")
    assert result.outcome == "skipped"
    assert result.run_id is None
    assert "paused" in result.reason
    assert await count_runs(system) == 0


async def test_bad_params_are_rejected_with_the_reason_visible(system: Harness) -> None:
    await add_trigger(system)
    bad = await send(system, "k1", date="2024-05-01", rows="many")
    missing = await send(system, "k2", rows="3")
    assert bad.outcome == "rejected"
    assert bad.run_id is None
    assert "params.rows" in bad.reason
    assert "'many'" in bad.reason
    assert missing.outcome == "rejected"
    assert "event.data.date" in missing.reason
    assert await count_runs(system) == 0
    by_key = {event["dedupe_key"]: event for event in await events_of(system, "t1")}
    assert by_key["k1"]["outcome"] == "rejected"
    assert by_key["k1"]["reason"] == bad.reason
    assert by_key["k2"]["reason"] == missing.reason
    assert by_key["k2"]["run_id"] is None
    # A rejected event is still the event: offering it again is a duplicate, not a second try.
    again = await send(system, "k1", date="2024-05-01", rows="5")
    assert again.outcome == "duplicate"
    assert again.run_id is None


async def publish_v2(system: Harness) -> None:
    await system.apply(PIPELINES.replace("command: [score,", "command: [score2,"))


async def test_pinned_version_and_default_at_the_time_of_the_event(system: Harness) -> None:
    await add_trigger(system, "pinned", pin="version: 1")
    await add_trigger(system, "floating")
    before = await send(system, "k1", trigger="floating", date="d")
    await publish_v2(system)
    after = await send(system, "k2", trigger="floating", date="d")
    pinned = await send(system, "k1", trigger="pinned", date="d")
    runs = {run_id: await system.get_run(run_id) for run_id in (before.run_id, after.run_id, pinned.run_id)}
    assert runs[before.run_id]["version"] == 1
    assert runs[after.run_id]["version"] == 2
    assert runs[after.run_id]["resolution"] == "default"
    assert runs[pinned.run_id]["version"] == 1
    assert runs[pinned.run_id]["resolution"] == "pinned"


async def test_disabled_version_is_rejected_with_the_reason(system: Harness) -> None:
    await add_trigger(system, pin="version: 1")
    await publish_v2(system)
    response = await system.client.patch("/api/v1/pipelines/scoring/versions/1", json={"status": "disabled"})
    assert response.status == 200, await response.text()
    result = await send(system, "k1", date="2024-05-01")
    assert result.outcome == "rejected"
    assert result.reason == "version 1 of scoring is disabled and takes no new runs"
    assert await count_runs(system) == 0


async def test_concurrency_skip_records_skipped(system: Harness) -> None:
    await system.apply(
        PIPELINES.replace("  - name: score\n", "  - name: score\n", 1).replace(
            "name: scoring\n", "name: scoring\nconcurrency: {max_active_runs: 1, on_limit: skip}\n"
        )
    )
    await add_trigger(system)
    first = await send(system, "k1", date="a")  # no agent: it stays queued and holds the slot
    second = await send(system, "k2", date="b")
    assert first.outcome == "run"
    assert second.outcome == "skipped"
    assert second.run_id is None
    assert "max_active_runs 1" in second.reason
    assert await count_runs(system) == 1


async def test_event_of_an_unknown_trigger_raises(system: Harness) -> None:
    with pytest.raises(NotFound):
        await send(system, "k1", trigger="nope", date="x")


async def test_a_burst_mixing_outcomes_commits_each_event_with_its_own(system: Harness) -> None:
    """Events arriving together share transactions: each still gets its own outcome and run."""
    await add_trigger(system)
    results = await asyncio.gather(
        *(send(system, f"k{index}", date=f"d{index}") for index in range(150)),
        *(send(system, f"bad{index}", date="d", rows="many") for index in range(10)),
        *(send(system, f"k{index}", date=f"d{index}") for index in range(20)),
    )
    made, rejected, repeats = results[:150], results[150:160], results[160:]
    assert {result.outcome for result in made} == {"run"}
    assert len({result.run_id for result in made}) == 150
    assert {result.outcome for result in rejected} == {"rejected"}
    assert all(result.run_id is None and "rows" in (result.reason or "") for result in rejected)
    assert {result.outcome for result in repeats} == {"duplicate"}
    assert [result.run_id for result in repeats] == [result.run_id for result in made[:20]]
    assert await count_runs(system) == 150
    rows = await system.pool.fetch("SELECT dedupe_key, outcome, run_id::text FROM events")
    stored = {row["dedupe_key"]: row for row in rows}
    assert len(stored) == 160
    assert all(stored[f"k{i}"]["run_id"] == made[i].run_id for i in range(150))
    assert all(stored[f"bad{i}"]["outcome"] == "rejected" for i in range(10))


async def test_an_event_the_database_refuses_fails_alone(system: Harness) -> None:
    """A batch the database refuses is retried event by event: only the refused one fails."""
    await add_trigger(system)
    await system.pool.execute(
        """
        CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.dedupe_key = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """
    )
    try:
        results = await asyncio.gather(
            *(send(system, f"k{index}", date=f"d{index}") for index in range(30)),
            send(system, "poison", date="d"),
            return_exceptions=True,
        )
    finally:
        await system.pool.execute("DROP TRIGGER refuse_poison ON events; DROP FUNCTION refuse_poison()")
    assert all(isinstance(result, EventResult) and result.outcome == "run" for result in results[:30])
    assert isinstance(results[30], Unavailable)
    assert "refused by the test" in str(results[30])
    assert await count_runs(system) == 30


async def test_text_the_database_cannot_store_is_rejected_with_the_reason(system: Harness) -> None:
    """A NUL character (or a lone surrogate) in a payload would be refused by PostgreSQL every time
    the source offered it again: the event is recorded, cleaned, as rejected instead."""
    await add_trigger(system)
    first = await send(system, "nul", date="a\u0000b")
    again = await send(system, "nul", date="a\u0000b")
    surrogate = await send(system, "surrogate", date="\ud800")
    assert first.outcome == "rejected"
    assert "NUL character" in (first.reason or "")
    assert again.outcome == "duplicate"
    assert surrogate.outcome == "rejected"
    stored = {event["dedupe_key"]: event for event in await events_of(system, "t1")}
    assert stored["nul"]["fields"]["data"]["date"] == "a\ufffdb"
    assert stored["surrogate"]["fields"]["data"]["date"] == "?"
    assert await count_runs(system) == 0


async def test_a_very_long_dedupe_key_still_dedupes(system: Harness) -> None:
    """An index entry holds about 2.7 kB: a longer key (a deep file path) is kept short by its digest."""
    await add_trigger(system)
    key = "incoming/" + "deep/" * 2000 + "file.csv"
    first = await send(system, key, date="d1")
    again = await send(system, key, date="d1")
    other = await send(system, key.replace("file.csv", "other.csv"), date="d2")
    assert (first.outcome, again.outcome, other.outcome) == ("run", "duplicate", "run")
    assert again.run_id == first.run_id
    stored = [event["dedupe_key"] for event in await events_of(system, "t1")]
    assert all(len(stored_key) <= 512 and "…sha256:" in stored_key for stored_key in stored)


@pytest.mark.parametrize(("on_limit", "runs", "held"), [("skip", 2, 0), ("queue", 10, 8)])
async def test_a_burst_at_a_concurrency_limit_takes_each_slot_once(
    system: Harness, on_limit: str, runs: int, held: int
) -> None:
    """Events committed together count each run they make against the limit."""
    await system.apply(
        PIPELINES.replace(
            "name: scoring\n", f"name: scoring\nconcurrency: {{max_active_runs: 2, on_limit: {on_limit}}}\n"
        )
    )
    await add_trigger(system)
    results = await asyncio.gather(*(send(system, f"k{index}", date=f"d{index}") for index in range(10)))
    outcomes = sorted(result.outcome for result in results)
    assert outcomes == ["run"] * runs + ["skipped"] * (10 - runs)
    assert await count_runs(system) == runs
    assert await system.pool.fetchval("SELECT count(*) FROM runs WHERE held") == held


async def test_an_event_can_template_its_own_id(system: Harness) -> None:
    await system.apply(TRIGGER.format(name="t1", pin="").replace('"${event.data.date}"', '"${event.id}"'))
    result = await send(system, "k1", date="ignored")
    assert result.outcome == "run"
    params = await system.pool.fetchval("SELECT params FROM runs WHERE id = $1::uuid", result.run_id)
    assert params["date"] == str(result.event_id)


async def test_a_version_disabled_while_its_event_is_planned_rejects_the_event(system: Harness) -> None:
    """The write finds the version disabled since it was read: nothing of the event is written, and
    the event, tried again, is rejected with the reason."""
    await add_trigger(system, pin="version: 1")
    assert system.scheduler is not None
    reuse = system.scheduler.reuse
    plan_many = reuse.plan_many

    async def disabling_first(conn, requests):
        planned = await plan_many(conn, requests)
        if requests and not disabled:
            disabled.append(True)
            await system.pool.execute("UPDATE versions SET status = 'disabled' WHERE pipeline = 'scoring'")
        return planned

    disabled: list[bool] = []
    reuse.plan_many = disabling_first
    try:
        result = await send(system, "k1", date="2024-05-01")
    finally:
        del reuse.plan_many
    assert disabled
    assert result.outcome == "rejected"
    assert result.reason == "version 1 of scoring is disabled and takes no new runs"
    assert await count_runs(system) == 0
    [event] = await events_of(system, "t1")
    assert event["outcome"] == "rejected"
    assert event["run_id"] is None


async def test_capacity_placed_for_an_event_that_writes_no_run_is_given_back(system: Harness) -> None:
    """With an agent free, an event's run is placed before it is written; a repeat, or an event the
    database refuses, writes no run, and the capacity placed for it is free again."""
    await system.agent("a1", cpu=4, behaviour=lambda assignment: Outcome(hold=True))
    await add_trigger(system)
    assert system.scheduler is not None
    agent = system.scheduler.registry.agents["a1"]
    first = await send(system, "k1", date="2024-05-01")
    assert first.outcome == "run"
    assert (
        await system.pool.fetchval("SELECT status FROM runs WHERE id = $1::uuid", first.run_id) == "running"
    )
    assert len(agent.reservations) == 1
    repeat = await send(system, "k1", date="2024-05-01")
    assert (repeat.outcome, repeat.run_id) == ("duplicate", first.run_id)
    await system.pool.execute(
        """
        CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
        CREATE TRIGGER refuse_all BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_all();
        """
    )
    try:
        with pytest.raises(Unavailable):
            await send(system, "k2", date="2024-05-02")
    finally:
        await system.pool.execute("DROP TRIGGER refuse_all ON events; DROP FUNCTION refuse_all()")
    assert len(agent.reservations) == 1
    second = await send(system, "k3", date="2024-05-03")
    assert second.outcome == "run"
    assert len(agent.reservations) == 2


async def test_a_repeat_in_a_burst_takes_no_concurrency_slot(system: Harness) -> None:
    """A redelivered event is answered as the duplicate it is, before anything counts it as a run."""
    await system.apply(
        PIPELINES.replace(
            "name: scoring\n", "name: scoring\nconcurrency: {max_active_runs: 1, on_limit: skip}\n"
        )
    )
    await add_trigger(system)
    assert (await system.client.post("/api/v1/triggers/t1/pause")).status == 200
    assert (await send(system, "k0", date="a")).outcome == "skipped"  # recorded, no run
    assert (await system.client.post("/api/v1/triggers/t1/resume")).status == 200
    repeat, new = await asyncio.gather(send(system, "k0", date="a"), send(system, "k1", date="b"))
    assert repeat.outcome == "duplicate"
    assert new.outcome == "run", new.reason
    assert await count_runs(system) == 1


async def test_runs_of_unlimited_versions_count_against_a_limited_one(system: Harness) -> None:
    """max_active_runs counts the pipeline's runs, whichever version they run."""
    await add_trigger(system, "pinned", pin="version: 1")  # version 1 sets no limit
    await system.apply(
        PIPELINES.replace("command: [score,", "command: [score2,").replace(
            "name: scoring\n", "name: scoring\nconcurrency: {max_active_runs: 1, on_limit: skip}\n"
        )
    )
    await add_trigger(system, "floating")  # the default, version 2, allows one active run
    first, second = await asyncio.gather(
        send(system, "k1", trigger="pinned", date="a"), send(system, "k1", trigger="floating", date="b")
    )
    assert first.outcome == "run"
    assert second.outcome == "skipped"
    assert "max_active_runs 1" in (second.reason or "")
    assert await count_runs(system) == 1


async def test_trigger_events_manual_runs_and_admissions_share_one_concurrency_rule(system: Harness) -> None:
    """Every way in counts against the same slots: the limit of the run's version, counted over the
    pipeline's active runs; a slot that frees admits the oldest held run, whichever way it came."""
    await system.apply(
        PIPELINES.replace("name: scoring\n", "name: scoring\nconcurrency: {max_active_runs: 1}\n")
    )
    await add_trigger(system)
    manual = await system.start_run("scoring", params={"date": "a"})  # no agent: it holds the slot
    assert manual["held"] is False
    event = await send(system, "k1", date="b")
    assert event.outcome == "run"
    later = await system.start_run("scoring", params={"date": "c"})
    assert later["held"] is True
    held = "SELECT held FROM runs WHERE id = $1::uuid"
    assert await system.pool.fetchval(held, event.run_id) is True

    assert system.client is not None
    assert system.scheduler is not None
    listener = system.scheduler.announcer.listen(event.run_id)
    response = await system.client.post(f"/api/v1/runs/{manual['run_id']}/cancel")
    assert response.status == 200, await response.text()
    changes = [listener.queue.get_nowait() for _ in range(listener.queue.qsize())]
    # Followers see the admitted run's step made ready (the dispatcher then says why it waits).
    assert ("step", "score", "ready", None) in {
        (change.kind, change.data.get("name"), change.data.get("status"), change.data.get("waiting_reason"))
        for change in changes
    }
    # The cancel commits the admission before it answers: the oldest held run, made by an event.
    assert await system.pool.fetchval(held, event.run_id) is False
    assert await system.pool.fetchval(held, later["run_id"]) is True


async def add_backfill(system: Harness, trigger: str = "t1") -> int:
    return await system.pool.fetchval(
        """
        INSERT INTO backfills (trigger, range_from, range_to, max_active, total)
        VALUES ($1, now() - interval '1 day', now(), 1, 1) RETURNING id
        """,
        trigger,
    )


def replayed(system: Harness, key: str, backfilled: Backfilled, **data: Any) -> Awaitable[EventResult]:
    assert system.scheduler is not None
    assert system.scheduler.triggering is not None
    event = TriggerEvent(trigger="t1", dedupe_key=key, fields={"data": {"rows": 5, **data}})
    return system.scheduler.triggering.sink.offer(event, backfill=backfilled)


async def test_a_backfill_event_over_a_limit_is_deferred_and_a_live_event_beside_it_runs(
    system: Harness,
) -> None:
    """In one group commit with ``on_limit: skip`` and one slot free: a backfill's event whose
    backfill has no slot, and one whose pipeline has none, take no slot and are not recorded (their
    keys stay unused); the live event between them runs."""
    await system.apply(
        PIPELINES.replace(
            "name: scoring\n", "name: scoring\nconcurrency: {max_active_runs: 2, on_limit: skip}\n"
        )
    )
    await add_trigger(system)
    assert (await send(system, "k0", date="a")).outcome == "run"  # no agent: it holds a slot
    backfill_id = await add_backfill(system)
    full, free = Allowance(0), Allowance(1)
    results = await asyncio.gather(
        replayed(system, "b1", Backfilled(backfill_id, full), date="b1"),
        send(system, "live", date="live"),
        replayed(system, "b2", Backfilled(backfill_id, free), date="b2"),
        return_exceptions=True,
    )
    assert isinstance(results[0], Deferred), results
    assert isinstance(results[1], EventResult), results
    assert results[1].outcome == "run", results
    assert isinstance(results[2], Deferred), results
    assert (free.free, free.started) == (1, [])
    keys = {event["dedupe_key"] for event in await events_of(system, "t1")}
    assert keys == {"k0", "live"}
    assert await count_runs(system) == 2


async def test_a_backfill_event_of_a_paused_trigger_or_a_disabled_version_is_deferred(
    system: Harness,
) -> None:
    await add_trigger(system, pin="version: 1")
    backfill_id = await add_backfill(system)
    response = await system.client.post("/api/v1/triggers/t1/pause")
    assert response.status == 200
    with pytest.raises(Deferred, match="paused"):
        await replayed(system, "b1", Backfilled(backfill_id, Allowance(1)), date="b1")
    response = await system.client.post("/api/v1/triggers/t1/resume")
    assert response.status == 200
    await publish_v2(system)
    response = await system.client.patch("/api/v1/pipelines/scoring/versions/1", json={"status": "disabled"})
    assert response.status == 200, await response.text()
    with pytest.raises(Deferred, match="disabled"):
        await replayed(system, "b1", Backfilled(backfill_id, Allowance(1)), date="b1")
    assert await events_of(system, "t1") == []

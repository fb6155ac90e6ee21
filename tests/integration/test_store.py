"""The store against a real PostgreSQL: migrations, publishing and version rules, datastores, triggers."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from daemon.errors import Conflict, Invalid, NotFound, Unavailable
from daemon.store import (
    create_pool,
    delete_trigger,
    get_datastore,
    get_pipeline,
    get_trigger,
    get_version,
    list_datastores,
    list_pipelines,
    list_triggers,
    list_versions,
    migrate,
    migrations,
    publish_version,
    set_default,
    set_status,
    set_trigger_paused,
    upsert_datastore,
    upsert_trigger,
)


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


async def publish(db, pipeline: str, content: str, *, make_default: bool = True):
    return await publish_version(
        db,
        pipeline=pipeline,
        digest=digest(content),
        source_digest=None,
        spec={"name": pipeline, "description": f"{pipeline} {content}", "steps": []},
        make_default=make_default,
    )


@pytest.fixture
async def empty_database(pg_admin_url: str) -> AsyncIterator[str]:
    """The name of a new database without any schema; dropped afterwards."""
    name = f"test_empty_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield name
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


# --- migrations -------------------------------------------------------------------------------------


async def test_migrations_apply_once_and_then_are_a_no_op(pg_admin_url: str, empty_database: str) -> None:
    names = [migration.name for migration in migrations()]
    assert names[0] == "0001_init"
    conn = await asyncpg.connect(pg_admin_url, database=empty_database)
    try:
        assert await migrate(conn) == names
        assert await migrate(conn) == []
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        assert [row["name"] for row in rows] == names
        assert all(row["applied_at"] is not None for row in rows)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_migration_exactly_once(
    pg_admin_url: str, empty_database: str
) -> None:
    connections = [await asyncpg.connect(pg_admin_url, database=empty_database) for _ in range(3)]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(migrate(conn) for conn in connections)), 30)
        applied = [name for result in results for name in result]
        assert sorted(applied) == [migration.name for migration in migrations()]
        count = await connections[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(migrations())
    finally:
        for conn in connections:
            await conn.close()


async def test_the_test_template_is_fully_migrated(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await migrate(conn) == []


# --- connections ------------------------------------------------------------------------------------


async def test_create_pool_reports_an_unreachable_server_without_the_password() -> None:
    with pytest.raises(Unavailable) as caught:
        await create_pool("postgresql://sluice:s3cret-pw@127.0.0.1:1/sluice", connect_timeout=5)
    assert "127.0.0.1:1/sluice" in caught.value.message
    assert "s3cret-pw" not in caught.value.message


async def test_jsonb_round_trips_as_python_values(pool: asyncpg.Pool) -> None:
    value = {"a": [1, 2.5, None, True], "b": {"c": "ü"}}
    assert await pool.fetchval("SELECT $1::jsonb", value) == value


# --- publishing -------------------------------------------------------------------------------------


async def test_publish_numbers_versions_and_moves_the_default(pool: asyncpg.Pool) -> None:
    v1, created1 = await publish(pool, "batch-scoring", "one", make_default=False)
    assert (v1.version, created1, v1.is_default, v1.status) == (1, True, True, "active")
    v2, created2 = await publish(pool, "batch-scoring", "two")
    assert (v2.version, created2, v2.is_default) == (2, True, True)
    v3, created3 = await publish(pool, "batch-scoring", "three", make_default=False)
    assert (v3.version, created3, v3.is_default) == (3, True, False)

    pipeline = await get_pipeline(pool, "batch-scoring")
    assert pipeline is not None
    assert (pipeline.default_version, pipeline.latest_version, pipeline.version_count) == (2, 3, 3)
    assert pipeline.description == "batch-scoring two"
    default = await get_version(pool, "batch-scoring")
    assert default is not None
    assert default.version == 2
    first = await get_version(pool, "batch-scoring", 1)
    assert first is not None
    assert (first.digest, first.is_default) == (v1.digest, False)
    assert await get_version(pool, "batch-scoring", 9) is None
    assert await get_version(pool, "nope") is None
    assert await get_pipeline(pool, "nope") is None


async def test_publishing_identical_content_returns_the_existing_version(pool: asyncpg.Pool) -> None:
    first, created = await publish(pool, "p", "same")
    await publish(pool, "p", "other")
    again, created_again = await publish(pool, "p", "same", make_default=True)
    assert created
    assert not created_again
    assert again.version == first.version == 1
    assert not again.is_default
    assert (await get_pipeline(pool, "p")).default_version == 2


async def test_the_same_digest_in_another_pipeline_is_another_version(pool: asyncpg.Pool) -> None:
    a, _ = await publish(pool, "a", "same")
    b, created = await publish(pool, "b", "same")
    assert created
    assert (a.pipeline, a.version, b.pipeline, b.version) == ("a", 1, "b", 1)


async def test_concurrent_publishes_never_share_a_number(pool: asyncpg.Pool) -> None:
    results = await asyncio.gather(*(publish(pool, "busy", f"content {i}") for i in range(12)))
    assert sorted(record.version for record, _ in results) == list(range(1, 13))
    assert all(created for _, created in results)
    assert sum(record.is_default for record in await list_versions(pool, "busy", limit=100)) == 1


async def test_concurrent_publishes_of_one_content_create_one_version(pool: asyncpg.Pool) -> None:
    results = await asyncio.gather(*(publish(pool, "twin", "identical") for _ in range(6)))
    assert [created for _, created in results].count(True) == 1
    assert {record.version for record, _ in results} == {1}


async def test_publish_inside_a_caller_transaction_rolls_back_with_it(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await publish(conn, "doomed", "x")
        assert (await get_pipeline(conn, "doomed")) is not None
        await transaction.rollback()
    assert await get_pipeline(pool, "doomed") is None


async def test_version_to_json_has_the_contract_shape(pool: asyncpg.Pool) -> None:
    record, _ = await publish_version(
        pool,
        pipeline="shape",
        digest=digest("spec"),
        source_digest=digest("source"),
        spec={"steps": [{"name": "prep"}]},
        make_default=True,
    )
    body = record.to_json()
    assert set(body) == {
        "pipeline",
        "version",
        "digest",
        "status",
        "is_default",
        "created_at",
        "spec",
        "source_digest",
    }
    assert body["digest"] == digest("spec")
    assert body["source_digest"] == digest("source")
    assert body["spec"] == {"steps": [{"name": "prep"}]}
    assert body["created_at"].endswith("+00:00")


# --- default version and status ---------------------------------------------------------------------


async def test_set_default_moves_the_default(pool: asyncpg.Pool) -> None:
    await publish(pool, "p", "one")
    await publish(pool, "p", "two")
    record = await set_default(pool, "p", 1)
    assert (record.version, record.is_default) == (1, True)
    assert (await get_version(pool, "p")).version == 1
    assert (await set_default(pool, "p", 1)).is_default


async def test_set_default_rejects_unknown_and_disabled_versions(pool: asyncpg.Pool) -> None:
    await publish(pool, "batch-scoring", "one")
    await publish(pool, "batch-scoring", "two")
    await publish(pool, "batch-scoring", "three", make_default=False)
    with pytest.raises(NotFound, match="pipeline batch-scoring has no version 7"):
        await set_default(pool, "batch-scoring", 7)
    with pytest.raises(NotFound, match="pipeline ghost does not exist"):
        await set_default(pool, "ghost", 1)
    await set_status(pool, "batch-scoring", 3, "disabled")
    with pytest.raises(
        Conflict, match="version 3 of batch-scoring is disabled; enable it before making it the default"
    ):
        await set_default(pool, "batch-scoring", 3)
    await set_status(pool, "batch-scoring", 3, "active")
    assert (await set_default(pool, "batch-scoring", 3)).is_default


async def test_set_status_rules(pool: asyncpg.Pool) -> None:
    await publish(pool, "batch-scoring", "one")
    await publish(pool, "batch-scoring", "two")
    assert (await set_status(pool, "batch-scoring", 1, "deprecated")).status == "deprecated"
    assert (await set_status(pool, "batch-scoring", 2, "deprecated")).status == "deprecated"
    assert (await set_status(pool, "batch-scoring", 1, "disabled")).status == "disabled"
    with pytest.raises(Conflict, match="version 2 is the default of batch-scoring and cannot be disabled"):
        await set_status(pool, "batch-scoring", 2, "disabled")
    with pytest.raises(NotFound, match="pipeline batch-scoring has no version 5"):
        await set_status(pool, "batch-scoring", 5, "active")
    with pytest.raises(NotFound, match="pipeline ghost does not exist"):
        await set_status(pool, "ghost", 1, "active")
    with pytest.raises(Invalid, match="unknown version status 'retired'"):
        await set_status(pool, "batch-scoring", 1, "retired")
    assert (await get_version(pool, "batch-scoring", 2)).status == "deprecated"


# --- pagination -------------------------------------------------------------------------------------


async def test_pipelines_page_by_name(pool: asyncpg.Pool) -> None:
    for name in ["delta", "alpha", "charlie", "bravo", "echo"]:
        await publish(pool, name, "x")
    first = await list_pipelines(pool, limit=2)
    assert [p.name for p in first] == ["alpha", "bravo"]
    second = await list_pipelines(pool, limit=2, after=first[-1].name)
    assert [p.name for p in second] == ["charlie", "delta"]
    third = await list_pipelines(pool, limit=2, after=second[-1].name)
    assert [p.name for p in third] == ["echo"]
    assert await list_pipelines(pool, limit=2, after="echo") == []


async def test_versions_page_newest_first(pool: asyncpg.Pool) -> None:
    for i in range(5):
        await publish(pool, "p", str(i))
    first = await list_versions(pool, "p", limit=2)
    assert [v.version for v in first] == [5, 4]
    assert [v.is_default for v in first] == [True, False]
    second = await list_versions(pool, "p", limit=2, before=first[-1].version)
    assert [v.version for v in second] == [3, 2]
    assert [v.version for v in await list_versions(pool, "p", limit=2, before=2)] == [1]
    assert await list_versions(pool, "p", limit=2, before=1) == []
    with pytest.raises(NotFound, match="pipeline ghost does not exist"):
        await list_versions(pool, "ghost", limit=10)


# --- datastores -------------------------------------------------------------------------------------


async def test_datastore_upsert_reports_what_it_did(pool: asyncpg.Pool) -> None:
    created, result = await upsert_datastore(pool, "landing", "local", {"path": "/data/landing", "ro": False})
    assert result == "created"
    same, result = await upsert_datastore(pool, "landing", "local", {"ro": False, "path": "/data/landing"})
    assert result == "unchanged"
    assert same == created
    updated, result = await upsert_datastore(pool, "landing", "local", {"path": "/data/elsewhere"})
    assert result == "updated"
    assert updated.spec == {"path": "/data/elsewhere"}
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert (await get_datastore(pool, "landing")) == updated
    assert await get_datastore(pool, "ghost") is None


async def test_datastores_page_by_name(pool: asyncpg.Pool) -> None:
    for name in ["b", "a", "c"]:
        await upsert_datastore(pool, name, "local", {"path": f"/{name}"})
    assert [d.name for d in await list_datastores(pool, limit=2)] == ["a", "b"]
    assert [d.name for d in await list_datastores(pool, limit=2, after="b")] == ["c"]


# --- triggers ---------------------------------------------------------------------------------------


async def test_trigger_upsert_keeps_paused_and_state(pool: asyncpg.Pool) -> None:
    await publish(pool, "batch-scoring", "one")
    spec = {"cron": "0 2 * * *", "timezone": "UTC", "params": {"date": "${event.scheduled_date}"}}
    created, result = await upsert_trigger(
        pool, name="nightly", pipeline="batch-scoring", version=None, source="cron", spec=spec
    )
    assert result == "created"
    assert (created.paused, created.state, created.last_event_at, created.version) == (False, {}, None, None)

    await set_trigger_paused(pool, "nightly", True)
    await pool.execute("UPDATE triggers SET state = $2 WHERE name = $1", "nightly", {"last_fire": "x"})

    same, result = await upsert_trigger(
        pool, name="nightly", pipeline="batch-scoring", version=None, source="cron", spec=dict(spec)
    )
    assert result == "unchanged"
    assert same.paused

    updated, result = await upsert_trigger(
        pool, name="nightly", pipeline="batch-scoring", version=1, source="cron", spec=spec
    )
    assert result == "updated"
    assert (updated.version, updated.paused, updated.state) == (1, True, {"last_fire": "x"})
    assert updated.to_json() == {
        "name": "nightly",
        "pipeline": "batch-scoring",
        "version": 1,
        "source": "cron",
        "paused": True,
        "spec": spec,
        "last_event_at": None,
        "created_at": updated.created_at.isoformat(),
        "updated_at": updated.updated_at.isoformat(),
    }


async def test_trigger_upsert_rejects_unknown_pipelines_versions_and_sources(pool: asyncpg.Pool) -> None:
    await publish(pool, "batch-scoring", "one")
    with pytest.raises(NotFound, match="pipeline ghost does not exist"):
        await upsert_trigger(pool, name="t", pipeline="ghost", version=None, source="cron", spec={})
    with pytest.raises(NotFound, match="pipeline batch-scoring has no version 4"):
        await upsert_trigger(pool, name="t", pipeline="batch-scoring", version=4, source="cron", spec={})
    with pytest.raises(Invalid, match="unknown trigger source 'kafka'"):
        await upsert_trigger(pool, name="t", pipeline="batch-scoring", version=None, source="kafka", spec={})
    # The savepoint keeps a caller's transaction usable after the error.
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(NotFound):
            await upsert_trigger(conn, name="t", pipeline="ghost", version=None, source="cron", spec={})
        _, result = await upsert_trigger(
            conn, name="t", pipeline="batch-scoring", version=None, source="cron", spec={}
        )
        assert result == "created"
    assert await get_trigger(pool, "t") is not None


async def test_trigger_pause_resume_delete_and_pages(pool: asyncpg.Pool) -> None:
    await publish(pool, "p", "one")
    for name in ["t-c", "t-a", "t-b"]:
        await upsert_trigger(pool, name=name, pipeline="p", version=None, source="files", spec={"files": {}})
    assert [t.name for t in await list_triggers(pool, limit=2)] == ["t-a", "t-b"]
    assert [t.name for t in await list_triggers(pool, limit=2, after="t-b")] == ["t-c"]

    assert (await set_trigger_paused(pool, "t-a", True)).paused
    assert not (await set_trigger_paused(pool, "t-a", False)).paused
    with pytest.raises(NotFound, match="trigger ghost does not exist"):
        await set_trigger_paused(pool, "ghost", True)

    await pool.execute("INSERT INTO events (trigger, dedupe_key, outcome) VALUES ('t-a', 'k', 'skipped')")
    assert await delete_trigger(pool, "t-a")
    assert not await delete_trigger(pool, "t-a")
    assert await get_trigger(pool, "t-a") is None
    assert await pool.fetchval("SELECT count(*) FROM events") == 0

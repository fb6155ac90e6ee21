"""The PostgreSQL store: schema migrations and typed data access (asyncpg, no ORM).

Every function takes a pool or a connection first (:data:`Db`), so callers can compose several calls
inside one transaction of their own. Errors a user can cause are :mod:`daemon.errors` types.
"""

from daemon.store import agents, attempts, images, new_runs, runs, steps
from daemon.store.agents import AgentRecord
from daemon.store.attempts import AttemptRecord
from daemon.store.catalog import (
    TRIGGER_SOURCES,
    DatastoreRecord,
    TriggerRecord,
    TriggerSource,
    UpsertResult,
    datastore_names,
    delete_trigger,
    get_datastore,
    get_trigger,
    list_datastores,
    list_triggers,
    set_trigger_paused,
    upsert_datastore,
    upsert_trigger,
)
from daemon.store.db import Db, create_pool, init_connection, transaction
from daemon.store.events import EventOutcome, EventRecord, list_events
from daemon.store.images import image_digests
from daemon.store.pipelines import (
    VERSION_STATUSES,
    PipelineRecord,
    VersionRecord,
    VersionStatus,
    get_pipeline,
    get_version,
    list_pipelines,
    list_versions,
    publish_version,
    set_default,
    set_status,
)
from daemon.store.runs import RunRecord
from daemon.store.schema import migrate, migrations
from daemon.store.steps import StepRunRecord

__all__ = [
    "TRIGGER_SOURCES",
    "VERSION_STATUSES",
    "AgentRecord",
    "AttemptRecord",
    "DatastoreRecord",
    "Db",
    "EventOutcome",
    "EventRecord",
    "PipelineRecord",
    "RunRecord",
    "StepRunRecord",
    "TriggerRecord",
    "TriggerSource",
    "UpsertResult",
    "VersionRecord",
    "VersionStatus",
    "agents",
    "attempts",
    "create_pool",
    "datastore_names",
    "delete_trigger",
    "get_datastore",
    "get_pipeline",
    "get_trigger",
    "get_version",
    "image_digests",
    "images",
    "init_connection",
    "list_datastores",
    "list_events",
    "list_pipelines",
    "list_triggers",
    "list_versions",
    "migrate",
    "migrations",
    "new_runs",
    "publish_version",
    "runs",
    "set_default",
    "set_status",
    "set_trigger_paused",
    "steps",
    "transaction",
    "upsert_datastore",
    "upsert_trigger",
]

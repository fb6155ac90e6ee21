"""What an event becomes before any planning, decided once for the live sink (``Ingest``) and for a
trigger test (``daemon.planning.preview``): its fields as recorded, then the rules that need no
planning (``daemon.rules.admission``: unstorable text, a paused trigger, a disabled version; params
templated from the event's fields, ``daemon.rules.event_params``). What is left is a draft of a run
for the one creation path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from daemon.errors import Invalid
from daemon.limits import storable
from daemon.planning.creation import Draft, RunCreation
from daemon.rules.admission import Verdict, refuse_event, refuse_version
from daemon.rules.event_params import resolve_params
from daemon.store.triggering import Target
from triggers.base import TriggerEvent


def recorded_fields(
    event: TriggerEvent, received: datetime, event_id: int | None
) -> tuple[dict[str, Any], bool]:
    """The event's fields as recorded (``time``, ``trigger`` and ``id`` added; text PostgreSQL cannot
    hold replaced), and whether some had to be."""
    fields, unstorable = storable({**event.fields, "time": received.isoformat(), "trigger": event.trigger})
    fields["id"] = event_id
    return fields, unstorable


async def decide_event(
    conn: asyncpg.Connection,
    creation: RunCreation,
    trigger: str,
    target: Target,
    fields: dict[str, Any],
    *,
    unstorable: bool,
) -> Verdict | Draft:
    """The verdict that the event makes no run (with the reason), or the draft of the run it makes."""
    pipeline, version = target.pipeline, target.version
    refused = refuse_event(trigger, unstorable=unstorable, paused=target.paused) or refuse_version(
        pipeline, version, target.version_status
    )
    if refused is not None:
        return refused
    spec = creation.specs.cached(pipeline, version) or await creation.specs.load(conn, pipeline, version)
    try:
        params = resolve_params(
            spec.spec.params,
            target.bindings,
            fields,
            what=f"pipeline {pipeline} version {version}",
            max_bytes=creation.params_max_bytes,
        )
    except Invalid as exc:
        return Verdict("rejected", exc)
    return Draft(spec, params)

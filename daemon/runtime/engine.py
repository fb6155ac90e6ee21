"""What the scheduling components share: the connections, the caches and the live registries."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS

from daemon.config import DispatchSettings
from daemon.dispatch.announce import Announcer
from daemon.dispatch.dispatcher import Dispatcher
from daemon.dispatch.registry import Registry
from daemon.planning.contexts import Datastores, RunContexts, Specs
from daemon.planning.creation import RunCreation
from daemon.planning.reuse_planner import ReusePlanner


@dataclass(frozen=True, slots=True)
class Engine:
    pool: asyncpg.Pool
    nc: NATS
    settings: DispatchSettings
    specs: Specs
    contexts: RunContexts
    datastores: Datastores
    registry: Registry
    announcer: Announcer
    dispatcher: Dispatcher
    reuse: ReusePlanner
    creation: RunCreation

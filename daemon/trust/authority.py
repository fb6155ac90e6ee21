"""Sluice's NATS trust: made once and kept in PostgreSQL, credentials minted and revoked under it,
and the configuration a NATS server needs to enforce it.

Sluice is the operator of its own NATS trust domain: one operator, the system account JetStream
needs, and Sluice's account, whose signing key signs every user. The daemon mints its own
credentials at each start (they never touch the disk); agents, services and admins get ``.creds``
files. A revocation re-issues the account JWT with the key listed in its ``revocations`` and pushes
it to the servers (``$SYS.REQ.CLAIMS.UPDATE``, as the system account): they drop the key's
connections at once and refuse it from then on. Servers run the full resolver, which keeps the
newest account JWT it was given across restarts.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import structlog

from daemon.errors import Conflict, NotFound, SluiceError
from daemon.store import credentials as store
from daemon.store.db import Db
from daemon.trust import claims, permissions
from daemon.trust.permissions import Role, ServiceGrant
from kit.nats import AGENT_TAG, BusError, NatsErrors, NatsOptions, connect, raw_credentials

log = structlog.get_logger(__name__)

OPERATOR = "sluice"
EVERY_JWT = 4102444800  # 2100-01-01
"""The revocation time of a revoked key: every JWT issued to it before then is refused. Keys are
never reused, so this revokes the key for good, whatever the clocks of the daemon that minted it and
of the database that revoked it say."""
ACCOUNT = "SLUICE"
SYSTEM_ACCOUNT = "SYS"
PUSH_TIMEOUT_S = 5.0


class PushFailed(SluiceError):
    """The NATS servers were not told of a change to Sluice's account (a revocation)."""

    code = "nats_unavailable"
    status = 503


@dataclass(frozen=True, slots=True)
class Trust:
    """The keys, and what can be derived from them."""

    record: store.TrustRecord

    @property
    def operator(self) -> str:
        return claims.public_key(self.record.operator_seed)

    @property
    def system_account(self) -> str:
        return claims.public_key(self.record.system_seed)

    @property
    def account(self) -> str:
        return claims.public_key(self.record.account_seed)

    def operator_jwt(self) -> str:
        return claims.operator_jwt(
            self.record.operator_seed,
            name=OPERATOR,
            system_account=self.system_account,
            issued_at=int(self.record.created_at.timestamp()),
        )

    def system_account_jwt(self) -> str:
        system = claims.Account(SYSTEM_ACCOUNT, self.system_account)
        return claims.account_jwt(
            self.record.operator_seed, system, issued_at=int(self.record.created_at.timestamp())
        )

    def user(self, name: str, grant: claims.Permissions, tags: tuple[str, ...] = ()) -> tuple[str, str]:
        """A new user of Sluice's account: its public key and ``.creds`` text."""
        seed = claims.new_seed("user")
        public = claims.public_key(seed)
        token = claims.user_jwt(
            self.record.signing_seed,
            user=public,
            name=name,
            account=self.account,
            permissions=grant,
            tags=tags,
        )
        return public, claims.creds(token, seed)

    def daemon_creds(self) -> str:
        """Credentials for this daemon process only, never written anywhere."""
        return self.user("sluice-daemon", permissions.daemon())[1]

    def system_creds(self) -> str:
        """A system-account user that may push account updates, for this process only."""
        seed = claims.new_seed("user")
        token = claims.user_jwt(
            self.record.system_seed,
            user=claims.public_key(seed),
            name="sluice-pusher",
            account=None,
            permissions=permissions.system_pusher(),
        )
        return claims.creds(token, seed)

    def server_config(self, resolver_dir: str) -> str:
        """The part of a nats-server configuration that makes it enforce this trust."""
        return (
            f"# Sluice's NATS trust: operator {self.operator}.\n"
            f"# Account {self.account} is Sluice's (JetStream on), {self.system_account} the system's.\n"
            f"operator: {self.operator_jwt()}\n"
            f"system_account: {self.system_account}\n"
            "resolver: {\n"
            "  type: full\n"
            f"  dir: {json.dumps(resolver_dir)}\n"
            "  allow_delete: false\n"
            '  interval: "2m"\n'
            "}\n"
            "resolver_preload: {\n"
            f"  {self.system_account}: {self.system_account_jwt()}\n"
            f"  {self.account}: {self.record.account_jwt}\n"
            "}\n"
        )


@dataclass(frozen=True, slots=True)
class Issued:
    name: str
    role: Role
    public_key: str
    creds: str


@dataclass(frozen=True, slots=True)
class Revoked:
    name: str
    keys: list[store.CredentialRecord]
    roles: set[str]


async def load(db: Db) -> Trust | None:
    """The trust, or None before one was made."""
    record = await store.get_trust(db)
    return None if record is None else Trust(record)


async def ensure(db: Db) -> Trust:
    """The trust, made now if there is none (safe when daemons start together: one wins)."""
    if (trust := await load(db)) is not None:
        return trust
    record = await store.create_trust(db, new_trust().record)
    log.info("nats_trust_created", operator=claims.public_key(record.operator_seed))
    return Trust(record)


def new_trust() -> Trust:
    """Fresh keys, not stored anywhere (``ensure`` stores them)."""
    seeds = {
        "operator": claims.new_seed("operator"),
        "system": claims.new_seed("account"),
        "account": claims.new_seed("account"),
        "signing": claims.new_seed("account"),
    }
    issued_at = int(time.time())
    record = store.TrustRecord(
        operator_seed=seeds["operator"],
        system_seed=seeds["system"],
        account_seed=seeds["account"],
        signing_seed=seeds["signing"],
        account_jwt=_account_jwt(seeds, {}, issued_at),
        account_issued_at=issued_at,
        created_at=datetime.fromtimestamp(issued_at, UTC),
    )
    return Trust(record)


def _account_jwt(seeds: dict[str, str], revocations: dict[str, int], issued_at: int) -> str:
    account = claims.Account(
        ACCOUNT,
        claims.public_key(seeds["account"]),
        signing_keys=[claims.public_key(seeds["signing"])],
        jetstream=True,
        revocations=revocations,
    )
    return claims.account_jwt(seeds["operator"], account, issued_at=issued_at)


async def issue(pool: asyncpg.Pool, role: Role, name: str, grant: ServiceGrant | None = None) -> Issued:
    """New credentials for ``name`` in ``role`` (an agent's name is its agent's name).

    Raises:
        NotFound: no trust was made (NATS is not Sluice's: its operator mints credentials).
        Conflict: ``name`` holds live credentials of another role.
        permissions.SubjectError: a service grant with a subject it may not have.
    """
    if role == "agent":
        grant_permissions, tags = permissions.agent(name), (AGENT_TAG,)
    elif role == "service":
        grant = grant or ServiceGrant()
        grant_permissions, tags = permissions.service(grant), ()
    else:
        grant_permissions, tags = permissions.admin(), ()
    async with pool.acquire() as conn, conn.transaction():
        record = await store.get_trust(conn, lock=True)
        if record is None:
            raise NotFound(
                "Sluice has no NATS trust: its NATS is not embedded and `sluice credentials init` "
                "was not run, so NATS credentials come from that server's operator"
            )
        others = await store.roles(conn, name, active=True) - {role}
        if others:
            raise Conflict(
                f"{name} already names credentials of a {others.pop()}; revoke them or pick another name"
            )
        public, creds = Trust(record).user(name, grant_permissions, tags)
        grants = msgspec.to_builtins(grant) if role == "service" else None
        await store.insert_credential(conn, public, name, role, grants)
    log.info("nats_credentials_issued", name=name, role=role, public_key=public)
    return Issued(name, role, public, creds)


async def revoke(pool: asyncpg.Pool, name: str) -> tuple[Trust, Revoked]:
    """Revokes every key of ``name`` and re-issues the account JWT to list them (push it next).

    Raises ``NotFound`` when ``name`` never had credentials.
    """
    async with pool.acquire() as conn, conn.transaction():
        record = await store.get_trust(conn, lock=True)
        roles = await store.roles(conn, name)
        if record is None or not roles:
            raise NotFound(f"no NATS credentials named {name}")
        keys = await store.revoke(conn, name)
        issued_at = max(int(time.time()), record.account_issued_at)
        seeds = {
            "operator": record.operator_seed,
            "account": record.account_seed,
            "signing": record.signing_seed,
        }
        revocations = dict.fromkeys(await store.revoked_keys(conn), EVERY_JWT)
        account_jwt = _account_jwt(seeds, revocations, issued_at)
        await store.set_account(conn, account_jwt, issued_at)
    log.info("nats_credentials_revoked", name=name, keys=[key.public_key for key in keys])
    record = dataclasses.replace(record, account_jwt=account_jwt, account_issued_at=issued_at)
    return Trust(record), Revoked(name, keys, roles)


async def push(options: NatsOptions, trust: Trust) -> None:
    """Hands the current account JWT to the NATS servers, as the system account.

    Raises ``PushFailed`` when no server takes it.
    """
    try:
        nc = await connect(
            options.with_creds(raw_credentials(trust.system_creds())),
            name="sluice-trust-push",
            first_timeout_s=PUSH_TIMEOUT_S,
        )
    except BusError as exc:
        raise PushFailed(f"cannot tell NATS of the change to Sluice's account: {exc}") from exc
    try:
        reply = await nc.request(
            "$SYS.REQ.CLAIMS.UPDATE", trust.record.account_jwt.encode(), timeout=PUSH_TIMEOUT_S
        )
        answer: dict[str, Any] = json.loads(reply.data or b"{}")
    except (*NatsErrors, ValueError) as exc:
        raise PushFailed(f"NATS did not take Sluice's account update: {exc or type(exc).__name__}") from exc
    finally:
        await nc.close()
    result = answer.get("data") or answer.get("error") or {}
    if result.get("code") != 200:
        raise PushFailed(f"NATS refused Sluice's account update: {result.get('description') or answer}")
    log.info("nats_account_pushed", account=trust.account, issued_at=trust.record.account_issued_at)


async def list_credentials(db: Db) -> list[store.CredentialRecord]:
    return await store.list_credentials(db)


def grant_of(record: store.CredentialRecord) -> ServiceGrant | None:
    if record.grants is None:
        return None
    return msgspec.convert(record.grants, ServiceGrant)


def describe(record: store.CredentialRecord) -> str:
    return permissions.describe(record.role, grant_of(record))  # type: ignore[arg-type]

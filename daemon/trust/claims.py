"""NATS decentralized authentication, encoded by hand: nkeys, JWT claims and ``.creds`` files.

A NATS JWT is ``b64url(header).b64url(claims).b64url(ed25519 signature)`` without padding, signed by
an nkey (operator → accounts, account signing key → users). ``nats-jwt`` on PyPI writes account
signing keys in a form nats-server refuses, so the few claims Sluice needs are written here; the
server validates them (``nats-server -t``), which the tests do.

Pure functions over keys and dicts: nothing here touches the network or the disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nkeys

KeyKind = Literal["operator", "account", "user"]
_PREFIXES = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = -1


def new_seed(kind: KeyKind) -> str:
    """A fresh nkey seed (``SO…``, ``SA…``, ``SU…``)."""
    return nkeys.encode_seed(os.urandom(32), _PREFIXES[kind]).decode()


def public_key(seed: str) -> str:
    """The public key (``O…``, ``A…``, ``U…``) of ``seed``."""
    return nkeys.from_seed(seed.encode()).public_key.decode()


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a user may publish and subscribe to (NATS subjects, wildcards allowed). ``deny`` wins
    over ``allow``. ``responses`` lets the user answer requests it received, on their reply subjects
    only, without a publish permission on them."""

    publish: Sequence[str] = ()
    subscribe: Sequence[str] = ()
    deny_publish: Sequence[str] = ()
    deny_subscribe: Sequence[str] = ()
    responses: bool = False

    def claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "pub": _allow_deny(self.publish, self.deny_publish),
            "sub": _allow_deny(self.subscribe, self.deny_subscribe),
        }
        if self.responses:
            claims["resp"] = {"max": 1, "ttl": 0}
        return claims


def _allow_deny(allow: Sequence[str], deny: Sequence[str]) -> dict[str, list[str]]:
    rule: dict[str, list[str]] = {}
    if allow:
        rule["allow"] = list(allow)
    if deny:
        rule["deny"] = list(deny)
    return rule


def operator_jwt(operator_seed: str, *, name: str, system_account: str, issued_at: int) -> str:
    return encode(
        operator_seed,
        subject=public_key(operator_seed),
        name=name,
        nats={"type": "operator", "version": 2, "system_account": system_account},
        issued_at=issued_at,
    )


@dataclass(frozen=True, slots=True)
class Account:
    """An account as the operator signs it. ``jetstream`` gives it unlimited JetStream storage;
    ``revocations`` maps user public keys to the time (unix seconds) before which their JWTs are
    refused."""

    name: str
    public_key: str
    signing_keys: Sequence[str] = ()
    jetstream: bool = False
    revocations: Mapping[str, int] = field(default_factory=dict)


def account_jwt(operator_seed: str, account: Account, *, issued_at: int | None = None) -> str:
    limits: dict[str, Any] = {
        "subs": _UNLIMITED,
        "data": _UNLIMITED,
        "payload": _UNLIMITED,
        "imports": _UNLIMITED,
        "exports": _UNLIMITED,
        "wildcards": True,
        "conn": _UNLIMITED,
        "leaf": _UNLIMITED,
    }
    if account.jetstream:
        limits |= {"mem_storage": _UNLIMITED, "disk_storage": _UNLIMITED, "streams": _UNLIMITED}
        limits |= {"consumer": _UNLIMITED}
    nats: dict[str, Any] = {"type": "account", "version": 2, "limits": limits}
    if account.signing_keys:
        nats["signing_keys"] = list(account.signing_keys)  # an array: the server refuses an object
    if account.revocations:
        nats["revocations"] = dict(account.revocations)
    return encode(
        operator_seed, subject=account.public_key, name=account.name, nats=nats, issued_at=issued_at
    )


def user_jwt(
    signing_seed: str,
    *,
    user: str,
    name: str,
    account: str | None,
    permissions: Permissions,
    tags: Sequence[str] = (),
    issued_at: int | None = None,
) -> str:
    """A user signed by ``signing_seed``: one of ``account``'s signing keys (hence ``issuer_account``),
    or, with ``account`` None, the account's own key."""
    nats: dict[str, Any] = {
        "type": "user",
        "version": 2,
        "subs": _UNLIMITED,
        "data": _UNLIMITED,
        "payload": _UNLIMITED,
        **permissions.claims(),
    }
    if account is not None:
        nats["issuer_account"] = account
    if tags:
        nats["tags"] = list(tags)
    return encode(signing_seed, subject=user, name=name, nats=nats, issued_at=issued_at)


def encode(
    signing_seed: str, *, subject: str, name: str, nats: dict[str, Any], issued_at: int | None = None
) -> str:
    """A JWT over these claims, signed with ``signing_seed`` (whose public key is the issuer)."""
    claims: dict[str, Any] = {
        "iat": int(time.time()) if issued_at is None else issued_at,
        "iss": public_key(signing_seed),
        "name": name,
        "sub": subject,
        "nats": nats,
    }
    claims["jti"] = _b32(hashlib.sha256(_json(claims)).digest())
    signing_input = f"{_b64(_json(_HEADER))}.{_b64(_json(claims))}"
    signer = nkeys.from_seed(signing_seed.encode())
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


CREDS_TEMPLATE = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


def creds(jwt: str, seed: str) -> str:
    """A standard ``.creds`` file (as ``nsc`` writes it): any NATS client opens it."""
    return CREDS_TEMPLATE.format(jwt=jwt, seed=seed)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b32(data: bytes) -> str:
    return base64.b32encode(data).rstrip(b"=").decode()

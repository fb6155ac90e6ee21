"""NATS credentials: minted for agents, services and admins, listed, revoked. Admin only.

A response that mints credentials carries their secret (the ``.creds`` text) once; Sluice keeps only
the public key.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from daemon.api.context import NATS_ACCESS, POOL, SCHEDULER
from daemon.api.contract import IDENTITY, NAME, Identity, Name, endpoint, whole
from daemon.api.http import json_response, read_body
from daemon.errors import BadRequest, Invalid, Unavailable
from daemon.trust import authority
from daemon.trust.permissions import Role, ServiceGrant, SubjectError

routes = web.RouteTableDef()


Subject = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class NewCredentials(msgspec.Struct, forbid_unknown_fields=True):
    name: Identity
    role: Role
    submit: list[Name] | None = None
    follow: list[Name] | None = None
    publish: list[Subject] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        whole(IDENTITY, self.name)
        whole(NAME, *(self.submit or ()), *(self.follow or ()))

    def grant(self) -> ServiceGrant | None:
        """A service's grant (raises ``BadRequest`` for a grant given to another role)."""
        if self.role != "service":
            if self.submit is not None or self.follow is not None or self.publish:
                raise BadRequest(f"submit, follow and publish are for services, not for an {self.role}")
            return None
        return ServiceGrant(
            submit=None if self.submit is None else tuple(self.submit),
            follow=None if self.follow is None else tuple(self.follow),
            publish=tuple(self.publish),
        )


@routes.post("/api/v1/credentials")
@endpoint("admin", body=NewCredentials)
async def create_credentials(request: web.Request) -> web.Response:
    """Mint NATS credentials: ``{"name", "role": "agent"|"service"|"admin", "submit"?, "follow"?,
    "publish"?}`` → 201 with the ``.creds`` text, shown this once."""
    body: NewCredentials = await read_body(request)
    try:
        issued = await authority.issue(request.app[POOL], body.role, body.name, body.grant())
    except SubjectError as exc:
        raise Invalid(f"publish: {exc}") from None
    return json_response(
        {"name": issued.name, "role": issued.role, "public_key": issued.public_key, "creds": issued.creds},
        status=201,
    )


@routes.get("/api/v1/credentials")
@endpoint("admin")
async def list_credentials(request: web.Request) -> web.Response:
    """Every NATS credential Sluice minted (one per key), live or revoked."""
    records = await authority.list_credentials(request.app[POOL])
    items = [
        {
            "name": record.name,
            "role": record.role,
            "public_key": record.public_key,
            "grant": record.grants,
            "may": authority.describe(record),
            "status": "revoked" if record.revoked_at else "active",
            "created_at": record.created_at.isoformat(),
            "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        }
        for record in records
    ]
    return json_response({"items": items, "next_cursor": None})


@routes.post("/api/v1/credentials/{name}/revoke")
@endpoint("admin", path={"name": IDENTITY})
async def revoke_credentials(request: web.Request) -> web.Response:
    """Revoke every key of a name: NATS drops its connections and refuses it from then on; an
    agent's running attempts are lost at once and run again elsewhere. Calling it again re-sends the
    revocation to NATS."""
    name = request.match_info["name"]
    nats = request.app.get(NATS_ACCESS)
    if nats is None:
        raise Unavailable("this daemon has no NATS settings to send the revocation with")
    trust, revoked = await authority.revoke(request.app[POOL], name)
    # Cut off first: an agent still connected would beat again and be given work once more.
    await authority.push(nats.options, trust)
    if "agent" in revoked.roles and (scheduler := request.app.get(SCHEDULER)) is not None:
        await scheduler.agent_revoked(name)
    return json_response({"name": name, "revoked": [key.public_key for key in revoked.keys]})

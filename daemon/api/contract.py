"""What each route takes, declared once: the scope a token needs, the content types and the type of
its body, and the constraints of its path and query parameters. The access middleware enforces the
scope, the content types and the body limits; :func:`check_parameters` refuses parameters outside
their constraints (so a name with a NUL byte never reaches PostgreSQL); the OpenAPI document is made
from the same declarations, so what it says is what the API does.

A route that declares nothing needs ``read`` for GET and ``admin`` for anything else.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web

from daemon.errors import BadRequest, NotFound
from daemon.limits import INT32_MAX

Scope = Literal["read", "run", "publish", "admin"]
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
DOCUMENT_TYPES = (JSON, *YAML_TYPES)
READING = frozenset({"GET", "HEAD", "OPTIONS"})

Schema = dict[str, Any]
NAME: Schema = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
IDENTITY: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
"""An agent's, a service's or a token's name: one NATS subject token."""
VERSION: Schema = {"type": "integer", "minimum": 1, "maximum": INT32_MAX}
RUN_ID: Schema = {
    "type": "string",
    "pattern": "^[0-9a-fA-F-]{8,36}$",
    "description": "a run id, or a unique prefix of at least 8 hex digits",
}
DIGEST: Schema = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
STEP_RUN: Schema = {
    "type": "string",
    "pattern": "^[a-z0-9][a-z0-9-]{0,62}(\\[[0-9]{1,9}\\])?$",
    "description": "a step's name, or a partition of a foreach step: score[3]",
}
PATH_PARAMETERS: Mapping[str, Schema] = {
    "name": NAME,
    "version": VERSION,
    "id": RUN_ID,
    "step": STEP_RUN,
    "digest": DIGEST,
}
BOOLEAN: Schema = {"type": "boolean"}
FILE_NAME: Schema = {"type": "string", "maxLength": 1024, "description": "the file named in error messages"}
IDEMPOTENCY_KEY: Schema = {"type": "string", "minLength": 1, "maxLength": 255}
Name = Annotated[str, msgspec.Meta(pattern=NAME["pattern"])]
"""A pipeline's (trigger's, datastore's, step's) name in a JSON body."""
Identity = Annotated[str, msgspec.Meta(pattern=IDENTITY["pattern"])]
"""An agent's, a service's or a token's name in a JSON body."""


def whole(schema: Schema, *values: str) -> None:
    """Raises ``ValueError`` unless each value matches ``schema``'s pattern as a whole: msgspec
    matches patterns with ``re.search``, whose ``$`` lets a trailing newline through."""
    for value in values:
        if not re.fullmatch(schema["pattern"], value):
            raise ValueError(f"{value!r} does not match {schema['pattern']}")


MAX_LIMIT = 500
DEFAULT_LIMIT = 100
LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}
CURSOR: Schema = {"type": "string", "maxLength": 1024, "description": "next_cursor of the page before"}
PAGED = {"limit": LIMIT, "cursor": CURSOR}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a route needs and takes. ``body``: the msgspec type of a JSON body; ``upload``: the
    larger body limit (source snapshots); ``page``: a web UI page, which sends a browser without
    credentials to the login page; ``path`` overrides :data:`PATH_PARAMETERS` by name."""

    scope: Scope
    body: type | None = None
    content_types: tuple[str, ...] = (JSON,)
    upload: bool = False
    page: bool = False
    query: Mapping[str, Schema] = field(default_factory=dict)
    path: Mapping[str, Schema] = field(default_factory=dict)
    headers: Mapping[str, Schema] = field(default_factory=dict)

    def path_schema(self, name: str) -> Schema:
        return self.path.get(name) or PATH_PARAMETERS.get(name) or {"type": "string"}


def endpoint(scope: Scope, **declared: Any) -> Callable[[H], H]:
    """Declares what the decorated handler needs and takes (put it under the route decorator)."""

    def mark(handler: H) -> H:
        handler.endpoint = Endpoint(scope, **declared)  # type: ignore[attr-defined]
        return handler

    return mark


def endpoint_of(handler: Any, method: str) -> Endpoint:
    declared = getattr(handler, "endpoint", None)
    if declared is not None:
        return declared
    return Endpoint("read" if method in READING else "admin")


def check_parameters(request: web.Request, declared: Endpoint) -> None:
    """Raises ``NotFound`` for a path parameter that cannot name anything (it is outside its
    constraints) and ``BadRequest`` for such a query parameter, naming it."""
    for name, value in request.match_info.items():
        try:
            _check(name, value, declared.path_schema(name))
        except BadRequest as exc:
            raise NotFound(f"nothing is named so: {exc.message}") from None
    for name, schema in declared.query.items():
        if (value := request.query.get(name)) is not None:
            _check(name, value, schema)


def _check(name: str, raw: str, schema: Schema) -> None:
    if "\0" in raw:
        raise BadRequest(f"{name} must not contain a NUL character")
    kind = schema.get("type")
    if kind == "integer":
        digits = raw.removeprefix("v") if schema is VERSION else raw
        try:
            value = int(digits)
        except ValueError:
            raise BadRequest(f"{name} must be an integer, not {raw[:40]!r}") from None
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise BadRequest(f"{name} must be between {low} and {high}, not {value}")
        return
    if kind == "boolean" and raw not in ("true", "false", "1", "0", "yes", "no"):
        raise BadRequest(f"{name} must be true or false, not {raw[:40]!r}")
    if "enum" in schema and raw not in schema["enum"]:
        raise BadRequest(f"{name} must be one of {', '.join(schema['enum'])}, not {raw[:40]!r}")
    if (pattern := schema.get("pattern")) and not re.fullmatch(pattern, raw):
        raise BadRequest(f"{name} {raw[:40]!r} is not valid ({schema.get('description') or pattern})")
    if (longest := schema.get("maxLength")) is not None and len(raw) > longest:
        raise BadRequest(f"{name} is longer than {longest} characters")
    if schema.get("format") == "uuid":
        try:
            uuid.UUID(raw)
        except ValueError:
            raise BadRequest(f"{name} must be a UUID, not {raw[:40]!r}") from None

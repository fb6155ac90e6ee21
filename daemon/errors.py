"""The error root of the control plane.

Every error a user can cause carries a stable ``code`` and an HTTP ``status``; the API turns it into
the contract's envelope and the CLI into one line on stderr. Anything else reaching the edge is a bug.
"""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    """Base of every error that Sluice reports to a user."""

    code = "internal"
    status = 500

    def __init__(self, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(SluiceError):
    code = "bad_request"
    status = 400


class Unauthorized(SluiceError):
    code = "unauthorized"
    status = 401


class Forbidden(SluiceError):
    code = "forbidden"
    status = 403


class NotFound(SluiceError):
    code = "not_found"
    status = 404


class Conflict(SluiceError):
    code = "conflict"
    status = 409


class TooLarge(SluiceError):
    code = "too_large"
    status = 413


class UnsupportedMediaType(SluiceError):
    code = "unsupported_media_type"
    status = 415


class Misdirected(SluiceError):
    """A request for a host this daemon does not answer to (DNS rebinding, a wrong address)."""

    code = "misdirected"
    status = 421


class Invalid(SluiceError):
    """Input that is well-formed but does not validate (documents, parameters)."""

    code = "invalid"
    status = 422


class Unavailable(SluiceError):
    """A backing service (PostgreSQL, NATS) cannot be reached."""

    code = "unavailable"
    status = 503

"""S3 event notifications as MinIO publishes them on NATS (its ``notify_nats`` target; AWS's own
event records have the same ``Records``): which objects of a bucket datastore a message names.

Pure code. A notification is a hint, never the truth: the trigger reads the object itself (HEAD)
before it settles it, so a forged or stale message can cost a request, never fire a run by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_plus

import msgspec

from kit.objectstore import S3Location, addressable
from triggers.files.settle import ObjectSignature


class _Bucket(msgspec.Struct, kw_only=True):
    name: str


class _Object(msgspec.Struct, kw_only=True, rename="camel"):
    key: str
    size: int | None = None
    e_tag: str | None = None


class _S3(msgspec.Struct, kw_only=True):
    bucket: _Bucket
    object: _Object


class _Record(msgspec.Struct, kw_only=True, rename="camel"):
    event_name: str
    s3: _S3


class _Message(msgspec.Struct, kw_only=True, rename={"records": "Records"}):
    records: list[_Record] = msgspec.field(default_factory=list)


_DECODER = msgspec.json.Decoder(_Message)


@dataclass(frozen=True, slots=True)
class Notified:
    """An object a notification names: its key relative to the datastore, whether it was removed, and
    what the message says it now is (None for a removal, or a message without size)."""

    key: str
    removed: bool
    claimed: ObjectSignature | None


class NotificationError(ValueError):
    """A message that is not an S3 event notification."""


def e_tag(value: str | None) -> str:
    """An ETag without the quotes listings and HEADs put around it (notifications have none)."""
    return (value or "").strip('"')


def notified(payload: bytes, location: S3Location) -> list[Notified]:
    """The objects under ``location`` that an S3 event message names, in its order.

    Raises:
        NotificationError: the payload is not an S3 event notification.
    """
    try:
        message = _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise NotificationError(f"not an S3 event notification: {exc}") from None
    prefix = f"{location.prefix}/" if location.prefix else ""
    found: list[Notified] = []
    for record in message.records:
        if record.s3.bucket.name != location.bucket:
            continue
        key = unquote_plus(record.s3.object.key)  # S3 events URL-encode keys (a space is '+')
        if not key.startswith(prefix) or not addressable(key[len(prefix) :]):
            continue  # another prefix, or a key no read could name (a forged 'a/../b' would crash it)
        obj = record.s3.object
        removed = "ObjectRemoved" in record.event_name
        claimed = None if removed or obj.size is None else ObjectSignature(e_tag(obj.e_tag), obj.size)
        found.append(Notified(key[len(prefix) :], removed, claimed))
    return found

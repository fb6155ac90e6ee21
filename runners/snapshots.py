"""The version source snapshots an agent unpacks, read from ``SOURCES_BUCKET`` on JetStream."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import nats.js.errors
from nats.js import JetStreamContext

from kit.nats import BusError, NatsErrors
from kit.subjects import SOURCES_BUCKET, SOURCES_STREAM, source_chunks

SOURCE_FETCH_TIMEOUT_S = 300.0


async def fetch_source(js: JetStreamContext, digest: str) -> bytes:
    """The snapshot archive named ``digest`` in ``SOURCES_BUCKET``, read a chunk at a time with
    stream message gets: an agent may read the bucket, never make a consumer on it (a consumer
    delivers to whatever subject its maker names).

    Raises ``BusError`` when the bucket or the object does not exist, the chunks do not add up to
    what the object's metadata says, or NATS fails.
    """
    try:
        return await asyncio.wait_for(_read_object(js, digest), SOURCE_FETCH_TIMEOUT_S)
    except nats.js.errors.BucketNotFoundError:
        raise BusError(f"no source bucket {SOURCES_BUCKET} on NATS") from None
    except nats.js.errors.ObjectNotFoundError:
        raise BusError(f"source snapshot {digest} is not in {SOURCES_BUCKET}") from None
    except NatsErrors as exc:
        raise BusError(f"cannot fetch source snapshot {digest}: {exc or type(exc).__name__}") from exc


async def _read_object(js: JetStreamContext, name: str) -> bytes:
    info = await (await js.object_store(SOURCES_BUCKET)).get_info(name)
    chunks = source_chunks(info.nuid)
    data, seq = bytearray(), 1
    for _ in range(info.chunks or 0):
        message = await js.get_msg(SOURCES_STREAM, seq=seq, subject=chunks, next=True)
        data += message.data or b""
        seq = (message.seq or seq) + 1
    expected = base64.urlsafe_b64decode((info.digest or "").partition("=")[2] + "==")
    if len(data) != (info.size or 0) or hashlib.sha256(data).digest() != expected:
        raise BusError(f"source snapshot {name} is damaged in {SOURCES_BUCKET} (size or digest differ)")
    return bytes(data)

"""Datastores of type ``s3`` (AWS S3 or anything that speaks its API: MinIO, Ceph, GCS's interop
endpoint): where one is, how to open it, and how a step's output is published in it.

The daemon (fingerprints, reuse, logs, bucket triggers) and the agents (downloads and uploads) share
this module. An :class:`S3Location` never holds a secret: it names environment variables or a
credentials file, read on the machine that opens the store; with none named, the standard provider
chain applies (``AWS_*`` variables, web identity, container or instance metadata).

Publishing an output: its files are uploaded under ``<output>/`` and only then is the manifest
``<output>.sluice-manifest.json`` written, listing each file with its size and ETag. Readers see an
output through its manifests only, so files of an upload that was killed or failed half way are never
part of anything downstream or reused. A fan-out step's output holds one manifest per partition
(``<output>/part-00003.sluice-manifest.json``): an output is the union of the manifests under it.
"""

from __future__ import annotations

import configparser
import os
import posixpath
import re
from collections.abc import Iterable, Mapping

import msgspec
import obstore
from obstore.store import S3Store

MANIFEST_SUFFIX = ".sluice-manifest.json"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class StoreError(Exception):
    """An object store cannot be opened or used; the message says why, for the user, without secrets."""


class S3Location(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An ``s3`` datastore as its document gives it. ``prefix`` has no leading or trailing slash."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    session_token_env: str | None = None
    credentials_file: str | None = None
    profile: str = "default"

    def key(self, relative: str) -> str:
        """The bucket key of ``relative`` (a path under the datastore)."""
        return posixpath.join(self.prefix, relative) if self.prefix else relative

    def uri(self, relative: str) -> str:
        """``s3://bucket/key`` of ``relative``, for steps that read the store themselves."""
        return f"s3://{self.bucket}/{self.key(relative)}"


def addressable(key: str) -> bool:
    """Whether obstore can name ``key`` (relative to a store's prefix): S3 allows keys with empty,
    ``.`` or ``..`` segments and control characters, but obstore refuses them with a ``ValueError``
    (not one of its store errors) on every call, so they are kept out before any call."""
    return (
        bool(key)
        and not _CONTROL.search(key)
        and all(segment not in ("", ".", "..") for segment in key.split("/"))
    )


def open_store(location: S3Location, environ: Mapping[str, str] = os.environ) -> S3Store:
    """A store whose paths are relative to ``location``'s prefix.

    Raises:
        StoreError: a named credential variable is unset, or the credentials file cannot be read.
    """
    config: dict[str, object] = {"virtual_hosted_style_request": not location.path_style}
    if location.endpoint:
        config["endpoint"] = location.endpoint
    if location.region:
        config["region"] = location.region
    config |= _credentials(location, environ)
    allow_http = bool(location.endpoint and location.endpoint.startswith("http://"))
    return S3Store(
        location.bucket,
        prefix=location.prefix or None,
        client_options={"allow_http": allow_http},
        **config,
    )


def _credentials(location: S3Location, environ: Mapping[str, str]) -> dict[str, str]:
    named = {
        "access_key_id": location.access_key_id_env,
        "secret_access_key": location.secret_access_key_env,
        "session_token": location.session_token_env,
    }
    found: dict[str, str] = {}
    for field, variable in named.items():
        if variable is None:
            continue
        value = environ.get(variable)
        if not value:
            raise StoreError(f"bucket {location.bucket}: environment variable {variable} is not set")
        found[field] = value
    if location.credentials_file is not None:
        found = _from_file(location) | found
    return found


def _from_file(location: S3Location) -> dict[str, str]:
    """The profile's keys from a file in the AWS shared credentials format."""
    path = location.credentials_file
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:  # type: ignore[arg-type]
            parser.read_file(handle)
    except OSError as exc:
        raise StoreError(
            f"bucket {location.bucket}: cannot read credentials file {path}: {exc.strerror or exc}"
        ) from None
    except configparser.Error as exc:
        # configparser's messages quote the offending line, which may be a secret
        raise StoreError(
            f"bucket {location.bucket}: credentials file {path} is not in the AWS credentials format "
            f"({type(exc).__name__})"
        ) from None
    if not parser.has_section(location.profile):
        raise StoreError(
            f"bucket {location.bucket}: credentials file {path} has no profile {location.profile}"
        )
    section = parser[location.profile]
    keys = {
        "access_key_id": "aws_access_key_id",
        "secret_access_key": "aws_secret_access_key",
        "session_token": "aws_session_token",
    }
    found = {field: section[name] for field, name in keys.items() if section.get(name)}
    if "access_key_id" not in found or "secret_access_key" not in found:
        raise StoreError(
            f"bucket {location.bucket}: profile {location.profile} of {path} lacks "
            "aws_access_key_id or aws_secret_access_key"
        )
    return found


class ManifestFile(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    """Relative to the output."""
    size: int
    e_tag: str | None = None
    sha256: str
    """Of the content, hex: taken while uploading, so content fingerprints need no download."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What an output holds, written once its every file is in the store."""

    files: list[ManifestFile]
    attempt: int
    """The attempt that published it (a retry publishes again, replacing it)."""


def reason_of(error: BaseException) -> str:
    """A store's error in one line: obstore's messages go on with the request and a debug dump of
    it (URLs and status codes, never credentials: requests are signed in headers, not shown)."""
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def manifest_key(output: str) -> str:
    """The manifest of the output whose files lie under ``output/``."""
    return output.rstrip("/") + MANIFEST_SUFFIX


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.encode(manifest)


def decode_manifest(data: bytes, key: str) -> Manifest:
    """Raises ``StoreError`` for a manifest this Sluice cannot read, or one that names a file outside
    its output (absolute, with ``..``, or no key at all)."""
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:
        raise StoreError(f"unreadable manifest {key}: {exc}") from None
    for entry in manifest.files:
        # Readers join these paths to a local directory (downloads) or a key (copies): anyone who may
        # write the bucket, a step reading it with mode: uri say, must not lead them outside it.
        if not addressable(entry.path):
            raise StoreError(f"manifest {key} names a file outside its output: {entry.path!r}")
    return manifest


async def published(store: S3Store, output: str) -> dict[str, ManifestFile] | None:
    """The published files of ``output`` by their path under it, or None when none is published:
    its own manifest, or else the union of the manifests under it (a fan-out step's partitions,
    published even when each of them is empty)."""
    output = output.rstrip("/")
    if (manifest := await read_manifest(store, manifest_key(output))) is not None:
        return {entry.path: entry for entry in manifest.files}
    listed = [meta["path"] async for chunk in obstore.list(store, output + "/") for meta in chunk]
    return await partitions_published(store, output, listed)


async def partitions_published(
    store: S3Store, output: str, keys: Iterable[str]
) -> dict[str, ManifestFile] | None:
    """The union of the manifests among ``keys`` (listed under ``output/``), by each file's path
    under ``output``, or None when there is none."""
    output = output.rstrip("/")
    files: dict[str, ManifestFile] | None = None
    for key in keys:
        if not key.endswith(MANIFEST_SUFFIX) or (manifest := await read_manifest(store, key)) is None:
            continue
        part = key[len(output) + 1 : -len(MANIFEST_SUFFIX)]
        files = {} if files is None else files
        files.update({posixpath.join(part, entry.path): entry for entry in manifest.files})
    return files


async def read_manifest(store: S3Store, key: str) -> Manifest | None:
    """The manifest at ``key``, or None when there is none. Raises ``StoreError`` for one this
    Sluice cannot read."""
    try:
        result = await obstore.get_async(store, key)
        data = await result.bytes_async()
    except FileNotFoundError:
        return None
    return decode_manifest(bytes(data), key)

"""Datastore documents: the raw YAML shape to a ``DatastoreSpec``."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from daemon.documents import names
from daemon.documents.paths import child
from daemon.documents.problems import Reporter
from daemon.documents.raw import InlineSecrets, RawCredentials, RawDatastore
from daemon.documents.specs import DatastoreSpec
from kit.objectstore import S3Location, addressable

# S3's rules for bucket names (lowercase letters, digits, '.', '-'; 3 to 63; letter or digit at both
# ends), which MinIO and Ceph enforce too.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_FIELDS = ("bucket", "prefix", "endpoint", "region", "path_style", "credentials")
_SECRETS = ("access_key_id", "secret_access_key", "session_token")


def build_datastore(name: str, raw: RawDatastore, report: Reporter) -> DatastoreSpec:
    """The spec of datastore ``name``; each problem found goes to ``report``."""
    _refuse_secrets(raw, "", report)
    if raw.type == "s3":
        if raw.path is not None:
            report.add("path", "is for type local; an s3 datastore has bucket and prefix")
        return DatastoreSpec(name=name, type="s3", s3=_location(raw, report))
    for field in _S3_FIELDS:
        if getattr(raw, field) is not None:
            report.add(field, "is for type s3; a local datastore has only path")
    if raw.path is None:
        report.add("path", "missing (a local datastore is a directory: give its absolute path)")
    elif not PurePosixPath(raw.path).is_absolute():
        report.add("path", "must be an absolute path")
    return DatastoreSpec(name=name, type="local", path=raw.path)


def _location(raw: RawDatastore, report: Reporter) -> S3Location:
    bucket = raw.bucket or ""
    if raw.bucket is None:
        report.add("bucket", "missing (an s3 datastore names its bucket)")
    elif not _BUCKET.fullmatch(bucket) or ".." in bucket:
        report.add("bucket", f"bad bucket name {bucket!r} (3 to 63 of a-z, 0-9, '.' and '-')")
    prefix = raw.prefix or ""
    if prefix.startswith("/") or ".." in PurePosixPath(prefix).parts or "\0" in prefix:
        report.add("prefix", "must be relative to the bucket, without a leading '/' or '..'")
    elif prefix.strip("/") and not addressable(prefix.strip("/")):
        # obstore refuses such a prefix with a ValueError each time the store is opened
        report.add("prefix", "must be a key prefix: no empty or '.' part, no control character")
    if raw.endpoint is not None:
        parts = urlsplit(raw.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
            report.add("endpoint", "must be an http:// or https:// URL, without credentials in it")
    credentials = _credentials(raw.credentials, report)
    return S3Location(
        bucket=bucket,
        prefix=prefix.strip("/"),
        endpoint=raw.endpoint,
        region=raw.region,
        path_style=bool(raw.path_style),
        **credentials,
    )


def _credentials(raw: RawCredentials | None, report: Reporter) -> dict[str, str]:
    """The ``S3Location`` fields that say where the credentials are; none for the provider chain."""
    if raw is None:
        return {}
    _refuse_secrets(raw, "credentials", report)
    named = {
        field: variable
        for field in ("access_key_id_env", "secret_access_key_env", "session_token_env")
        if (variable := getattr(raw, field)) is not None
    }
    for field, variable in named.items():
        if problem := names.identifier_problem(variable):
            report.add(child("credentials", field), problem)
    if named and (raw.file is not None or raw.profile is not None):
        report.add("credentials", "give environment variable names or file and profile, not both")
    elif named and ("access_key_id_env" not in named or "secret_access_key_env" not in named):
        report.add("credentials", "needs both access_key_id_env and secret_access_key_env")
    if raw.profile is not None and raw.file is None:
        report.add(child("credentials", "profile"), "needs file (the credentials file holding the profile)")
    if raw.file is not None:
        if not PurePosixPath(raw.file).is_absolute():
            report.add(child("credentials", "file"), "must be an absolute path")
        return {"credentials_file": raw.file, "profile": raw.profile or "default"}
    return named


def _refuse_secrets(raw: InlineSecrets, path: str, report: Reporter) -> None:
    for secret in _SECRETS:
        if getattr(raw, secret) is not None:
            report.add(
                child(path, secret),
                "never write a secret in a document: name the environment variable that holds it "
                f"with credentials.{secret}_env (or use credentials.file and profile)",
            )

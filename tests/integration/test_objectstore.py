"""kit.objectstore against a real S3 endpoint: opening stores with named credentials, and outputs
that exist only through their manifests."""

from __future__ import annotations

import hashlib

import obstore
import pytest

from kit.objectstore import (
    Manifest,
    ManifestFile,
    S3Location,
    StoreError,
    decode_manifest,
    encode_manifest,
    manifest_key,
    open_store,
    published,
)


def _entry(path: str, data: bytes, e_tag: str | None) -> ManifestFile:
    return ManifestFile(path=path, size=len(data), e_tag=e_tag, sha256=hashlib.sha256(data).hexdigest())


async def _publish(store, output: str, files: dict[str, bytes], attempt: int = 1) -> None:
    entries = []
    for path, data in files.items():
        result = await obstore.put_async(store, f"{output}/{path}", data)
        entries.append(_entry(path, data, result["e_tag"]))
    manifest = Manifest(files=entries, attempt=attempt)
    await obstore.put_async(store, manifest_key(output), encode_manifest(manifest))


async def test_store_is_relative_to_the_prefix_and_uses_named_credentials(s3) -> None:
    bucket = s3.make_bucket("objectstore-prefix")
    store = open_store(s3.location(bucket, "team/a"), s3.env())
    await obstore.put_async(store, "x/y.txt", b"hi")
    keys = [item["Key"] for item in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team/a/x/y.txt"]
    assert s3.location(bucket, "team/a").uri("x/y.txt") == f"s3://{bucket}/team/a/x/y.txt"


def test_an_unset_credential_variable_is_named() -> None:
    location = S3Location(bucket="b", access_key_id_env="NOPE_ID", secret_access_key_env="NOPE_SECRET")
    with pytest.raises(StoreError, match="environment variable NOPE_ID is not set"):
        open_store(location, {})


def test_a_credentials_file_profile(tmp_path) -> None:
    path = tmp_path / "credentials"
    path.write_text("[scoring]\naws_access_key_id = AKIA1\naws_secret_access_key = s3cr3t\n")
    open_store(S3Location(bucket="b", credentials_file=str(path), profile="scoring"), {})
    with pytest.raises(StoreError, match="has no profile other") as raised:
        open_store(S3Location(bucket="b", credentials_file=str(path), profile="other"), {})
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "aws_access_key_id = AKIA1\naws_secret_access_key = s3cr3t\n",  # no [profile] header
        "[default]\naws_access_key_id = AKIA1\ns3cr3t\n",  # a secret wrapped onto its own line
    ],
)
def test_a_malformed_credentials_file_is_refused_without_its_lines(tmp_path, text: str) -> None:
    path = tmp_path / "credentials"
    path.write_text(text)
    with pytest.raises(StoreError, match="is not in the AWS credentials format") as raised:
        open_store(S3Location(bucket="b", credentials_file=str(path)), {})
    assert "s3cr3t" not in str(raised.value)


@pytest.mark.parametrize("path", ["../../home/a/.ssh/authorized_keys", "/etc/passwd", "a//b", "a/./b", ""])
def test_a_manifest_naming_a_file_outside_its_output_is_refused(path: str) -> None:
    manifest = encode_manifest(Manifest(files=[_entry(path, b"x", "e")], attempt=1))

    with pytest.raises(StoreError, match="names a file outside its output"):
        decode_manifest(manifest, "runs/r/s/o.sluice-manifest.json")


async def test_an_output_is_what_its_manifests_list(s3) -> None:
    store = open_store(s3.location(s3.make_bucket("objectstore-manifests")), s3.env())
    # A killed upload: files without a manifest are no output at all.
    await obstore.put_async(store, "runs/r1/prep/features/half.csv", b"1,2")
    assert await published(store, "runs/r1/prep/features") is None

    await _publish(store, "runs/r1/prep/features", {"a.csv": b"a", "sub/b.csv": b"bb"})
    files = await published(store, "runs/r1/prep/features")
    assert sorted(files) == ["a.csv", "sub/b.csv"]
    assert files["sub/b.csv"].size == 2

    # A fan-out step: one manifest per partition, a partition without one is not there.
    await _publish(store, "runs/r1/score/out/part-00000", {"s.csv": b"0"})
    await _publish(store, "runs/r1/score/out/part-00001", {"s.csv": b"1"})
    await obstore.put_async(store, "runs/r1/score/out/part-00002/s.csv", b"2")
    assert sorted(await published(store, "runs/r1/score/out")) == ["part-00000/s.csv", "part-00001/s.csv"]
    # Partitions that each published nothing: an empty output, not a missing one.
    await _publish(store, "runs/r1/filter/out/part-00000", {})
    assert await published(store, "runs/r1/filter/out") == {}

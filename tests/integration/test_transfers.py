"""runners.transfers on its own against a real S3 endpoint (moto_server): what an upload of a step's
output directory may take from the agent's disk."""

from __future__ import annotations

from pathlib import Path

import obstore
import pytest

from kit.objectstore import open_store, published
from runners.staging import Remote
from runners.transfers import TransferError, upload


async def quiet(_: str) -> None:
    pass


def output(s3, tmp_path: Path, bucket: str) -> Remote:
    """An output directory under a step run's staging dir, standing for ``runs/r/s/out``."""
    location = s3.location(s3.make_bucket(bucket))
    within = tmp_path / "staging" / "r" / "s"
    path = within / "default" / "runs" / "r" / "s" / "out"
    path.mkdir(parents=True)
    return Remote(
        "output out", "default", location, open_store(location, s3.env()), "runs/r/s/out", path, within
    )


@pytest.mark.parametrize("link", ["file", "output-dir"])
async def test_an_output_with_a_link_out_of_the_staging_dir_is_refused(s3, tmp_path: Path, link: str) -> None:
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = s3cr3t\n")
    remote = output(s3, tmp_path, f"transfers-link-{link}")
    (remote.path / "ok.csv").write_text("a\n")
    if link == "file":
        (remote.path / "stolen").symlink_to(secret)
        culprit = remote.path / "stolen"
    else:  # the step replaced its output directory by a link
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "credentials").symlink_to(secret)
        remote.path.rename(tmp_path / "gone")
        remote.path.symlink_to(tmp_path / "elsewhere")
        culprit = remote.path
    with pytest.raises(TransferError, match=f"{culprit} leads out of the step's staging directory"):
        await upload(remote, 1, quiet)
    assert [meta async for chunk in obstore.list(remote.store) for meta in chunk] == []


async def test_a_link_to_an_input_in_the_staging_dir_is_uploaded_as_its_file(s3, tmp_path: Path) -> None:
    remote = output(s3, tmp_path, "transfers-link-input")
    raw = remote.within / "landing" / "raw.csv"
    raw.parent.mkdir()
    raw.write_text("x,y\n")
    (remote.path / "raw.csv").symlink_to(raw)
    await upload(remote, 1, quiet)
    files = await published(remote.store, "runs/r/s/out")
    assert files is not None
    assert files["raw.csv"].size == 4


async def test_a_lost_attempt_leaves_the_output_a_later_attempt_published(s3, tmp_path: Path) -> None:
    remote = output(s3, tmp_path, "transfers-superseded")
    (remote.path / "a.csv").write_text("2\n")
    await upload(remote, 2, quiet)
    (remote.path / "a.csv").unlink()
    (remote.path / "b.csv").write_text("1\n")  # the lost attempt 1 finishes late, with other files

    with pytest.raises(TransferError, match=r"attempt 2 published .* already; attempt 1 leaves it"):
        await upload(remote, 1, quiet)
    files = await published(remote.store, "runs/r/s/out")
    assert files is not None
    assert sorted(files) == ["a.csv"]

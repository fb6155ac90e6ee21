"""A daemon that reads s3 datastores (fingerprints of their data, reuse checks) with credentials
from its environment never writes them to its log, and one whose variable is unset says which on
the step instead of failing."""

from __future__ import annotations

import json

import obstore
import pytest

from kit.objectstore import open_store
from tests.e2e.sluice import api_get, apply, cli, start_run, wait_for
from tests.s3 import S3Endpoint

pytestmark = pytest.mark.e2e


PIPELINE = """
kind: Pipeline
name: reads
steps:
  - name: open
    command: [cat, "${inputs.raw}"]
    inputs:
      raw: {datastore: landing, path: days, hash: content}
  - name: locked
    command: [cat, "${inputs.raw}"]
    inputs:
      raw: {datastore: locked, path: days}
"""


def test_s3_credentials_stay_out_of_the_daemons_log(
    sluice_up, base_env: dict[str, str], s3: S3Endpoint
) -> None:
    bucket = s3.make_bucket("e2e-secrets")
    obstore.put(open_store(s3.location(bucket), s3.env()), "days/a.csv", b"id\n1\n")
    up = sluice_up("--agents", "0", env=base_env | s3.env())
    documents = [
        s3.datastore_document("default", bucket),
        s3.datastore_document("landing", bucket),
        s3.datastore_document("locked", bucket, env_prefix="UNSET_S3"),
        PIPELINE,
    ]
    apply("---\n".join(documents), up.client_env)
    listed = cli("datastores", "--json", env=up.client_env)
    run_id = start_run("reads", up.client_env)

    def steps() -> dict[str, dict] | None:
        found = {step["name"]: step for step in api_get(f"/runs/{run_id}", up.client_env)["steps"]}
        return found if all(step["inputs"] for step in found.values()) else None

    found = wait_for(steps, timeout=30)
    up.stop()

    assert found["open"]["inputs"][0]["fingerprint"].startswith("sha256:")
    assert found["locked"]["reuse"]["reason"].endswith(
        f"cannot read s3://{bucket}/days: bucket {bucket}: environment variable UNSET_S3_KEY_ID is not set"
    ), found["locked"]["reuse"]
    shown = {item["name"]: item for item in json.loads(listed.stdout)["items"]}
    assert shown["landing"]["bucket"] == bucket
    assert shown["landing"]["secret_access_key_env"] == "TEST_S3_SECRET"  # the name, not the value
    log = "".join(up.output)
    assert "daemon_ready" in log
    for secret in (s3.secret_access_key, s3.access_key_id):
        assert secret not in log, f"the daemon's log shows a credential:\n{log[-3000:]}"
        assert secret not in listed.stdout

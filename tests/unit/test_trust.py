"""Trust on the bus, the pure parts: JWTs and .creds files, role permissions, subject algebra, the
wire's sender-carrying subjects, an agent's check of the paths it is told, refusal throttling."""

from __future__ import annotations

import base64

import nkeys
import pytest
import structlog

from daemon.runtime.refusals import Refusals
from daemon.trust import authority, claims, permissions
from daemon.trust.permissions import ServiceGrant, SubjectError, is_within, overlaps
from kit.nats import AGENT_TAG, creds_agent, jwt_claims, read_creds_claims
from kit.objectstore import S3Location
from kit.redaction import redacted_urls
from runners import options
from runners.protocol import (
    Assignment,
    Resources,
    heartbeat_sender,
    heartbeat_subject,
    step_event_id,
    step_event_origin,
    step_event_subject,
)
from runners.workspace import misplaced


def test_a_user_jwt_is_signed_by_the_account_signing_key_and_names_its_account() -> None:
    trust = authority.new_trust()
    public, text = trust.user("gpu-1", permissions.agent("gpu-1"), (AGENT_TAG,))
    token = text.split("-----BEGIN NATS USER JWT-----\n")[1].split("\n")[0]
    header, payload, signature = token.split(".")
    signer = nkeys.from_seed(trust.record.signing_seed.encode())
    assert signer.verify(f"{header}.{payload}".encode(), base64.urlsafe_b64decode(signature + "=="))
    decoded = jwt_claims(token)
    assert (decoded["sub"], decoded["name"]) == (public, "gpu-1")
    assert decoded["iss"] == signer.public_key.decode()
    assert decoded["nats"]["issuer_account"] == trust.account
    assert decoded["nats"]["pub"]["allow"][:3] == [
        "sluice.agents.gpu-1.heartbeat",
        "sluice.steps.gpu-1.>",
        "sluice.logs.gpu-1.>",
    ]
    assert decoded["nats"]["resp"] == {"max": 1, "ttl": 0}


def test_a_creds_file_reads_back_and_tells_an_agent_from_other_users(tmp_path) -> None:
    trust = authority.new_trust()
    agent_file, service_file = tmp_path / "a.creds", tmp_path / "s.creds"
    public, text = trust.user("gpu-1", permissions.agent("gpu-1"), (AGENT_TAG,))
    agent_file.write_text(text)
    service_file.write_text(trust.user("svc", permissions.service(ServiceGrant()))[1])
    assert read_creds_claims(str(agent_file))["sub"] == public
    assert creds_agent(str(agent_file)) == "gpu-1"
    assert creds_agent(str(service_file)) is None
    assert "USER NKEY SEED-----\nSU" in text
    (tmp_path / "junk.creds").write_text("hello")
    with pytest.raises(ValueError, match="no NATS user JWT"):
        creds_agent(str(tmp_path / "junk.creds"))


def test_the_account_lists_its_signing_key_as_an_array_and_its_revocations() -> None:
    seed = claims.new_seed("operator")
    account = claims.Account(
        "SLUICE", "AXXX", signing_keys=["AKEY"], jetstream=True, revocations={"UREVOKED": 1700000000}
    )
    nats = jwt_claims(claims.account_jwt(seed, account))["nats"]
    assert nats["signing_keys"] == ["AKEY"]
    assert nats["revocations"] == {"UREVOKED": 1700000000}
    assert nats["limits"]["mem_storage"] == nats["limits"]["disk_storage"] == -1


@pytest.mark.parametrize(
    ("subject", "pattern", "within"),
    [
        ("sluice.agents.a.heartbeat", "sluice.agents.>", True),
        ("sluice.agents.*.heartbeat", "sluice.agents.>", True),
        ("sluice.>", "sluice.agents.>", False),
        (">", "sluice.>", False),
        ("sluice", "sluice.>", False),
        ("a.b", "a.*", True),
        ("a.*", "a.b", False),
        ("a.b.c", "a.*", False),
        ("$JS.API.STREAM.INFO.X", "$JS.>", True),
    ],
)
def test_is_within(subject: str, pattern: str, within: bool) -> None:
    assert is_within(subject, pattern) is within


@pytest.mark.parametrize(
    ("one", "other", "overlap"),
    [
        (">", "sluice.submit.*", True),
        ("*.submit.x", "sluice.submit.*", True),
        ("scoring.>", "sluice.submit.*", False),
        ("sluice.submit", "sluice.submit.*", False),
        ("a.>", "a", False),
        ("a.*.c", "a.b.*", True),
    ],
)
def test_overlaps(one: str, other: str, overlap: bool) -> None:
    assert overlaps(one, other) is overlap
    assert overlaps(other, one) is overlap


def test_a_service_gets_its_pipelines_and_subjects_and_never_sluices_own() -> None:
    grant = ServiceGrant(submit=("scoring",), follow=("scoring",), publish=("scoring.requests.>",))
    allowed = permissions.service(grant)
    assert list(allowed.publish) == ["sluice.submit.scoring", "scoring.requests.>"]
    assert list(allowed.subscribe) == ["_INBOX.>", "sluice.runs.scoring.>"]
    assert {"sluice.agents.>", "sluice.steps.>", "$JS.>"} <= set(allowed.deny_publish)
    assert not allowed.responses
    everything = permissions.service(ServiceGrant(publish=(">",)))
    assert list(everything.publish) == ["sluice.submit.*", ">"]
    assert list(everything.subscribe) == ["_INBOX.>", "sluice.runs.>"]


@pytest.mark.parametrize(
    ("publish", "message"),
    [
        ("sluice.agents.local.assign", "Sluice's own subject"),
        ("sluice.steps.>", "Sluice's own subject"),
        ("sluice.submit.x", "granted with --submit"),
        ("$JS.API.STREAM.CREATE.X", "Sluice's own subject"),
        ("_INBOX.abc", "Sluice's own subject"),
        (">", "would submit to every pipeline"),
        ("a..b", "bad NATS subject"),
        ("a.>.b", "bad NATS subject"),
    ],
)
def test_a_service_may_not_be_given(publish: str, message: str) -> None:
    with pytest.raises(SubjectError, match=message):
        permissions.service(ServiceGrant(submit=("scoring",), publish=(publish,)))


def test_an_agent_may_publish_only_on_its_own_name() -> None:
    allowed = permissions.agent("a")
    assert all("sluice.agents.b" not in subject and ".b." not in subject for subject in allowed.publish)
    assert list(allowed.subscribe) == [
        "sluice.agents.a.assign",
        "sluice.agents.a.cancel",
        "sluice.inbox.agent.a.>",
    ]
    assert not any(is_within("sluice.agents.b.heartbeat", subject) for subject in allowed.publish)
    assert any(is_within("sluice.steps.a.7.finished", subject) for subject in allowed.publish)
    assert not any(is_within("sluice.steps.b.7.finished", subject) for subject in allowed.publish)


def test_subjects_carry_the_sender_and_parse_back() -> None:
    assert heartbeat_sender(heartbeat_subject("gpu-1")) == "gpu-1"
    assert step_event_origin(step_event_subject("gpu-1", 42, "finished")) == ("gpu-1", 42, "finished")
    assert step_event_id("a", 42, "started") != step_event_id("b", 42, "started")
    for bad in (
        "sluice.steps.42.finished",
        "sluice.steps.a.x.finished",
        "sluice.steps.a.1.paused",
        f"sluice.steps.a.{2**63}.finished",  # beyond what the database holds
    ):
        with pytest.raises(ValueError, match="not a step event subject"):
            step_event_origin(bad)
    with pytest.raises(ValueError, match="not a heartbeat subject"):
        heartbeat_sender("sluice.agents.heartbeat")


def _assignment(**fields: object) -> Assignment:
    values: dict[str, object] = {
        "attempt_id": 1,
        "run_id": "r",
        "pipeline": "p",
        "version": 1,
        "step": "s",
        "number": 1,
        "argv": ["true"],
        "env": {},
        "resources": Resources(cpu=1, memory=0),
        "datastores": {"default": "/data/default"},
        "outputs": {"out": "/data/default/runs/r/s/out"},
        "log_path": "/data/default/runs/r/s/logs/attempt-1.log",
    }
    return Assignment(**(values | fields))


def test_an_agent_refuses_paths_outside_its_cache_and_the_attempts_datastores(tmp_path) -> None:
    cache = tmp_path / "cache"
    assert misplaced(_assignment(), cache, {}) is None
    assert misplaced(_assignment(log_path=str(cache / "x.log")), cache, {}) is None
    assert "log /etc/cron.d/x is outside" in misplaced(_assignment(log_path="/etc/cron.d/x"), cache, {})
    escape = _assignment(outputs={"out": "/data/default/../../root/.ssh"})
    assert "output out /data/default/../../root/.ssh is outside" in misplaced(escape, cache, {})
    assert "relative root" in misplaced(_assignment(datastores={"default": "data"}), cache, {})
    moved = misplaced(_assignment(), cache, {"default": "/mnt/default"})
    assert moved == "datastore default is at /mnt/default on this agent, not at /data/default"
    assert misplaced(_assignment(log_path="/data/defaultx/a.log"), cache, {}) is not None


def test_an_s3_datastore_must_be_staged_in_the_step_runs_own_staging_dir(tmp_path) -> None:
    cache = tmp_path / "cache"
    lake = S3Location(bucket="lake")
    root = f"{cache}/staging/r/s/lake"
    staged = {"default": "/data/default", "lake": root}
    assert misplaced(_assignment(datastores=staged, stores={"lake": lake}), cache, {}) is None
    elsewhere = _assignment(datastores=staged | {"lake": "/data/lake"}, stores={"lake": lake})
    assert (
        misplaced(elsewhere, cache, {})
        == f"s3 datastore lake is staged at {root} on this agent, not at /data/lake"
    )
    another_run = _assignment(run_id="r2", datastores=staged, stores={"lake": lake})
    assert "is staged at " in (misplaced(another_run, cache, {}) or "")
    climbing = _assignment(step="..", datastores=staged, stores={"lake": lake})
    assert misplaced(climbing, cache, {}) == "run or step '..' cannot name a staging directory"
    assert misplaced(_assignment(stores={"lake": lake}), cache, {}) == "s3 datastore lake has no root"


def test_the_agent_name_comes_from_its_sluice_credentials() -> None:
    assert options.agent_name(None, "gpu-1", "host.example.com") == "gpu-1"
    assert options.agent_name("gpu-1", "gpu-1", "host") == "gpu-1"
    assert options.agent_name(None, None, "host.example.com") == "host"
    with pytest.raises(ValueError, match="the credentials are agent gpu-1's"):
        options.agent_name("gpu-2", "gpu-1", "host")


def test_refusals_are_logged_once_per_source_per_interval() -> None:
    refusals = Refusals("refused", interval_s=3600)
    with structlog.testing.capture_logs() as logged:
        for _ in range(5):
            refusals.refuse("a", "forged")
        refusals.refuse("b", "forged")
    assert [(entry["source"], entry["dropped_since_last"]) for entry in logged] == [("a", 0), ("b", 0)]


def test_passwords_in_urls_are_masked() -> None:
    assert (
        redacted_urls("nats://u:s3cret@n1:4222, nats://n2:4222,nats://tok@n3")
        == "nats://u:***@n1:4222,nats://n2:4222,nats://***@n3"
    )

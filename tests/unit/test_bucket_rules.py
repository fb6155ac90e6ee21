"""The pure parts of files triggers on buckets: what an S3 event notification names, where a listing
for a pattern starts, object dedupe keys, and the saved state."""

from __future__ import annotations

import json

import pytest

from kit.objectstore import S3Location
from triggers.files.accounts import dump_objects, load_objects
from triggers.files.matching import Matcher, literal_prefix
from triggers.files.notifications import NotificationError, Notified, notified
from triggers.files.settle import ObjectSignature, Settled, Settler

LANDING = S3Location(bucket="lake", prefix="landing")


def event(name: str, bucket: str, key: str, **obj: object) -> dict:
    return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key, **obj}}}


def test_a_notification_names_the_objects_of_its_bucket_under_the_prefix_with_keys_decoded() -> None:
    payload = {
        "EventName": "s3:ObjectCreated:Put",
        "Key": "lake/landing/in/a b.csv",
        "Records": [
            event(
                "s3:ObjectCreated:Put",
                "lake",
                "landing/in/day+one/a%2Bb.csv",
                size=5,
                eTag="e1",
                sequencer="1",
            ),
            event(
                "s3:ObjectCreated:CompleteMultipartUpload", "lake", "landing/in/big.csv", size=9, eTag="e2-3"
            ),
            event("ObjectRemoved:Delete", "lake", "landing/in/gone.csv"),  # AWS names have no s3: prefix
            event("s3:ObjectCreated:Put", "other", "landing/in/x.csv", size=1, eTag="e3"),
            event("s3:ObjectCreated:Put", "lake", "landingzone/x.csv", size=1, eTag="e4"),
            event("s3:ObjectCreated:Put", "lake", "landing/in/nosize.csv"),
        ],
    }

    assert notified(json.dumps(payload).encode(), LANDING) == [
        Notified("in/day one/a+b.csv", False, ObjectSignature("e1", 5)),
        Notified("in/big.csv", False, ObjectSignature("e2-3", 9)),
        Notified("in/gone.csv", True, None),
        Notified("in/nosize.csv", False, None),
    ]
    unprefixed = S3Location(bucket="lake")
    assert "landingzone/x.csv" in [item.key for item in notified(json.dumps(payload).encode(), unprefixed)]


@pytest.mark.parametrize(
    "key", ["landing/in/../x.csv", "landing/in//x.csv", "landing/in/./x.csv", "landing/in/a%0Ab.csv"]
)
def test_a_notification_naming_a_key_no_read_can_name_is_ignored(key: str) -> None:
    # obstore refuses such keys with a ValueError, which crashed the trigger's loops: anyone who may
    # publish on the subject could restart the trigger (and its full listing) at will.
    payload = {"Records": [event("s3:ObjectCreated:Put", "lake", key, size=1, eTag="e")]}

    assert notified(json.dumps(payload).encode(), LANDING) == []


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"Records": [{"eventName": 3}]}'])
def test_a_message_that_is_no_s3_event_is_refused(payload: bytes) -> None:
    with pytest.raises(NotificationError, match="not an S3 event notification"):
        notified(payload, LANDING)


def test_a_message_without_records_names_nothing() -> None:
    assert notified(b'{"EventName": "s3:TestEvent"}', LANDING) == []


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("incoming/**/*.csv", "incoming/"),
        ("incoming/2026-*/x/*.csv", "incoming/"),
        ("./a//b/c.csv", "a/b/"),
        ("*.csv", ""),
        ("**", ""),
        ("a/[xy]/b.csv", "a/"),
        ("exact.csv", ""),
    ],
)
def test_a_listing_starts_at_the_fixed_directories_of_the_pattern(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix
    matcher = Matcher("", pattern)
    for path in ("incoming/2026-01/x/a.csv", "a/b/c.csv", "a/x/b.csv", "z.csv", "exact.csv"):
        if matcher.matches(path):
            assert path.startswith(prefix)


def test_an_object_is_one_dedupe_key_per_etag() -> None:
    v1, v2 = ObjectSignature("abc", 10), ObjectSignature("def-2", 10)
    assert Settled("in/a.csv", "created", v1).dedupe_key == "in/a.csv:abc"
    assert Settled("in/a.csv", "modified", v2, v1).dedupe_key == "in/a.csv:def-2"
    assert Settled("in/a.csv", "deleted", None, v2).dedupe_key == "in/a.csv:deleted:def-2"


def test_an_object_settles_on_a_stable_etag_and_an_unread_one_is_asked_again_later() -> None:
    settler = Settler(2.0)
    settler.observe("a", ObjectSignature("e1", 5), 0.0)
    assert settler.due(2.0) == ["a"]
    assert settler.confirm("a", ObjectSignature("e2", 5), 2.0) is None  # rewritten meanwhile
    assert settler.due(4.0) == ["a"]
    settler.postpone("a", 4.0)  # the store did not answer
    assert settler.due(5.9) == []
    assert settler.due(6.0) == ["a"]
    assert settler.confirm("a", ObjectSignature("e2", 5), 6.0) is not None


def test_saved_objects_load_back_without_keys_the_pattern_dropped() -> None:
    seen = {"in/a.csv": ObjectSignature("e1", 5), "out/b.csv": ObjectSignature("e2", 6)}
    state = json.loads(json.dumps(dump_objects(seen)))
    assert state == {"objects": {"in/a.csv": ["e1", 5], "out/b.csv": ["e2", 6]}}
    assert load_objects(state, Matcher("", "in/*.csv")) == {"in/a.csv": ObjectSignature("e1", 5)}
    assert load_objects({"seen": {"in/a.csv": [1, 2]}}, Matcher("", "**")) == {}  # a directory's state
    assert load_objects({"objects": {"in/a.csv": [1, 2], "in/b.csv": "x"}}, Matcher("", "**")) == {}

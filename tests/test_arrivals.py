"""retrain.arrivals: S3 event notifications as the queue delivers them (moto's S3 -> SQS), and the quiet
period before intake against the real S3 API (time is simulated; the listings are real)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from retrain.arrivals import (
    CREATED,
    REMOVED,
    incoming_state,
    parse_notification_body,
    parse_trigger_payload,
    wait_for_quiet,
)
from retrain.config import ConfigError, load_settings


@pytest.fixture
def queue(moto_server, store, settings):
    """The bucket notifies a fresh queue of created/removed objects under the incoming prefix."""
    url = moto_server.notify_queue(
        store.bucket, settings.s3.incoming_prefix, f"q-{uuid.uuid4().hex[:8]}", drain_test_event=False
    )
    return moto_server.sqs_client(), url


def _receive_all(sqs, url) -> list[dict]:
    out = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return out
        out += got
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in got]
        )


def test_created_and_removed_notifications_from_the_queue(queue, store, settings):
    sqs, url = queue
    key = "incoming/2026 batch/a+b.json"  # form-encoded in the notification: spaces as "+", "+" as %2B
    etag = store.put_bytes(key, b'{"text": "x", "label": {}}\n')
    store.put_bytes("state/other.json", b"{}")  # outside the prefix: no notification
    store.delete(key)
    messages = _receive_all(sqs, url)
    notes = parse_trigger_payload({"status": "success", "message_batch": messages})
    assert notes.test_events == 1  # sent when the notification was configured
    assert notes.unreadable == []
    assert [(e.kind, e.key) for e in notes.events] == [(CREATED, key), (REMOVED, key)]
    created = notes.events[0]
    assert created.etag == etag.strip('"') and created.bucket == store.bucket and created.size > 0
    assert created.name == "ObjectCreated:Put" and notes.events[1].name == "ObjectRemoved:Delete"
    assert notes.newest is not None and abs(notes.newest - datetime.now(UTC)) < timedelta(minutes=5)
    summary = notes.summary()
    assert summary["created"] == 1 and summary["removed_keys"] == [key]


def test_sns_envelope_minio_event_names_and_bad_messages():
    record = {
        "eventName": "s3:ObjectRemoved:Delete",  # MinIO keeps the "s3:" prefix
        "eventTime": "2026-12-02T10:00:00.000Z",
        "s3": {"bucket": {"name": "b"}, "object": {"key": "incoming%2Fx.json"}},
    }
    sns = json.dumps({"Type": "Notification", "Message": json.dumps({"Records": [record]})})
    notes = parse_notification_body(sns, "m1")
    assert [(e.kind, e.key, e.etag, e.size) for e in notes.events] == [(REMOVED, "incoming/x.json", "", None)]
    assert notes.events[0].time == datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    bad = parse_trigger_payload(
        {
            "message_batch": [
                {"MessageId": "m2", "Body": "not json"},
                {"MessageId": "m3", "Body": json.dumps({"hello": 1})},
                {"MessageId": "m4", "Body": json.dumps({"Records": [{"eventName": "ObjectTagging:Put"}]})},
                "junk",
            ]
        }
    )
    assert bad.events == [] and len(bad.unreadable) == 4
    assert bad.unreadable[0].startswith("m2: body is not JSON")
    assert "m4: record 0" in bad.unreadable[2]
    assert parse_trigger_payload(None).events == []


def _settings(bucket: str, **events) -> object:
    env = {"RETRAIN__S3__BUCKET": bucket}
    env.update({f"RETRAIN__EVENTS__{k.upper()}": str(v) for k, v in events.items()})
    return load_settings(environ=env)


class FakeClock:
    """Simulated seconds; ``sleep`` advances them and runs what the test scheduled for that moment."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.actions: list[tuple[float, object]] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        due = [a for a in self.actions if a[0] <= self.now]
        self.actions = [a for a in self.actions if a[0] > self.now]
        for _, action in due:
            action()


def test_quiet_at_once_when_nothing_changed_recently(store):
    s = _settings(store.bucket, quiet_period_seconds=60)
    store.put_bytes("incoming/old.json", b"{}\n")
    clock = FakeClock(datetime.now(UTC).timestamp() + 3600)  # the object is an hour old
    outcome = wait_for_quiet(store, s, clock=clock, sleep=clock.sleep)
    assert outcome.quiet and outcome.checks == 1 and outcome.waited_seconds == 0 and clock.sleeps == []
    assert outcome.objects == 1 and outcome.idle_seconds >= 3600


def test_a_burst_restarts_the_quiet_period_until_it_ends(store):
    s = _settings(store.bucket, quiet_period_seconds=30, check_interval_seconds=5, max_wait_seconds=600)
    store.put_bytes("incoming/b-00.json", b"{}\n")
    clock = FakeClock(datetime.now(UTC).timestamp() + 1)  # the first object landed a second ago
    for i in range(1, 4):  # three more objects, 10 s apart
        clock.actions.append(
            (clock.now + 10 * i, lambda i=i: store.put_bytes(f"incoming/b-{i:02d}.json", b"{}\n"))
        )
    start = clock.now
    outcome = wait_for_quiet(store, s, clock=clock, sleep=clock.sleep)
    assert outcome.quiet and outcome.changes == 3 and outcome.objects == 4
    # the last object is seen at the check 30 s in; then 30 quiet seconds
    assert (
        outcome.waited_seconds == pytest.approx(60, abs=0.01) and clock.now - start == outcome.waited_seconds
    )
    assert max(clock.sleeps) <= 5
    assert incoming_state(store, s).objects == 4


def test_a_removal_restarts_it_and_the_triggering_event_counts(store):
    s = _settings(store.bucket, quiet_period_seconds=20, check_interval_seconds=5)
    store.put_bytes("incoming/a.json", b"{}\n")
    clock = FakeClock(datetime.now(UTC).timestamp() + 600)
    # the notification that started the run (a removal: no LastModified to see) was 5 s ago
    event_at = datetime.fromtimestamp(clock.now - 5, UTC)
    clock.actions.append((clock.now + 10, lambda: store.delete("incoming/a.json")))
    outcome = wait_for_quiet(store, s, event_at, clock=clock, sleep=clock.sleep)
    assert outcome.quiet and outcome.changes == 1 and outcome.objects == 0
    assert outcome.waited_seconds == pytest.approx(30, abs=0.01)  # removal seen at 10 s, then 20 s quiet


def test_max_wait_ends_a_steady_trickle(store):
    s = _settings(store.bucket, quiet_period_seconds=30, check_interval_seconds=5, max_wait_seconds=40)
    store.put_bytes("incoming/t-first.json", b"{}\n")
    clock = FakeClock(datetime.now(UTC).timestamp())
    for i in range(20):
        clock.actions.append(
            (clock.now + 4 * i, lambda i=i: store.put_bytes(f"incoming/t-{i}.json", b"{}\n"))
        )
    outcome = wait_for_quiet(store, s, clock=clock, sleep=clock.sleep)
    assert not outcome.quiet and outcome.waited_seconds == pytest.approx(40, abs=0.01)
    assert outcome.idle_seconds < 30


def test_enabled_without_a_queue_is_a_config_error(bucket_name):
    with pytest.raises(ConfigError, match="events.queue_url"):
        _settings(bucket_name, enabled="true")
    s = _settings(bucket_name, enabled="true", queue_url="https://sqs.eu-west-1.amazonaws.com/1/q")
    assert s.events.enabled and s.events.quiet_period_seconds == 60
    with pytest.raises(ConfigError, match="wait_time_seconds"):
        _settings(bucket_name, wait_time_seconds=21)  # SQS long polls at most 20 s

"""plugins/retrain_airflow/events.py: the incoming asset, its queue watcher and the DAG's schedule, from
conf; and the watcher's trigger itself, run as the triggerer runs it, against moto's SQS."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/ner-retrain-incoming"


def _settings(**env):
    from retrain.config import load_settings

    return load_settings(environ={"RETRAIN__S3__BUCKET": "events-test", **env})


def _enabled(**env):
    return _settings(RETRAIN__EVENTS__ENABLED="true", RETRAIN__EVENTS__QUEUE_URL=QUEUE, **env)


def test_off_by_default_the_schedule_is_the_cron():
    from retrain_airflow import events

    s = _settings()
    assert not s.events.enabled
    assert events.retrain_schedule(s) == "0 2 * * *"
    asset = events.incoming_asset(s)
    assert (asset.name, asset.uri, asset.watchers) == ("clue-ner.incoming", "s3://events-test/incoming", [])


def test_enabled_cron_or_asset_with_the_sqs_watcher():
    from airflow.sdk import AssetOrTimeSchedule
    from retrain_airflow import events

    s = _enabled(RETRAIN__EVENTS__AWS_CONN_ID="aws_events", RETRAIN__EVENTS__WAIT_TIME_SECONDS="7")
    schedule = events.retrain_schedule(s)
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.timetable.expression == "0 2 * * *"
    (watcher,) = schedule.asset_condition.watchers
    classpath, kwargs = watcher.trigger.serialize()
    # the common-messaging trigger dispatches scheme "sqs" to the amazon provider's trigger
    assert classpath == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
    assert kwargs["sqs_queue"] == QUEUE and kwargs["aws_conn_id"] == "aws_events"
    assert (kwargs["wait_time_seconds"], kwargs["waiter_delay"], kwargs["max_messages"]) == (7, 1, 10)
    assert kwargs["delete_message_on_reception"] is True and kwargs["message_filtering"] is None
    # the queue's connection defaults to the S3 one
    assert events.queue_trigger(_enabled()).serialize()[1]["aws_conn_id"] == "aws_default"
    # no cron: the asset alone
    assert events.retrain_schedule(_enabled(RETRAIN__SCHEDULE__CRON="null")) == [events.incoming_asset(s)]


def test_the_watcher_trigger_turns_queue_messages_into_one_event(moto_server, monkeypatch):
    """The trigger the triggerer runs (SqsSensorTrigger through MessageQueueTrigger, aiobotocore client
    from the Airflow connection) against moto: object created + removed -> one event whose payload
    retrain.arrivals reads back; the messages are gone from the queue afterwards."""
    from retrain_airflow import events

    from retrain.arrivals import CREATED, REMOVED, parse_trigger_payload

    bucket = f"ev-{uuid.uuid4().hex[:10]}"
    moto_server.client().create_bucket(Bucket=bucket)
    url = moto_server.notify_queue(bucket, "incoming/", f"q-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("AIRFLOW_CONN_EVENTS_TEST", moto_server.airflow_connection())
    s = _settings(
        RETRAIN__S3__BUCKET=bucket,
        RETRAIN__EVENTS__ENABLED="true",
        RETRAIN__EVENTS__QUEUE_URL=url,
        RETRAIN__EVENTS__AWS_CONN_ID="events_test",
        RETRAIN__EVENTS__WAIT_TIME_SECONDS="1",
    )
    moto_server.client().put_object(Bucket=bucket, Key="incoming/a.json", Body=b"{}\n")
    moto_server.client().delete_object(Bucket=bucket, Key="incoming/a.json")
    trigger = events.queue_trigger(s).trigger  # what serialize() hands to the triggerer

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=60))
    assert event.payload["status"] == "success"
    notes = parse_trigger_payload(event.payload)
    assert [(e.kind, e.key) for e in notes.events] == [
        (CREATED, "incoming/a.json"),
        (REMOVED, "incoming/a.json"),
    ]
    json.dumps(event.payload)  # stored as the asset event's extra: must be JSON
    left = moto_server.sqs_client().get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    assert left == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


@pytest.mark.parametrize("cron", ["0 2 * * *", None])
def test_dag_wiring_with_events(cron, monkeypatch, tmp_path):
    """ner_retrain with events on: the quiet-period task comes first; parsing fetches no connection."""
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo / "plugins"))
    monkeypatch.setenv("RETRAIN__EVENTS__ENABLED", "true")
    monkeypatch.setenv("RETRAIN__EVENTS__QUEUE_URL", QUEUE)
    monkeypatch.setenv("RETRAIN__SCHEDULE__CRON", json.dumps(cron))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(repo / "dags" / "ner_retrain.py"))
    assert bag.import_errors == {}
    dag = bag.dags["ner_retrain"]
    assert dag.get_task("wait_for_quiet_incoming").downstream_task_ids == {"find_new_batches"}
    assert dag.get_task("find_new_batches").upstream_task_ids == {"wait_for_quiet_incoming"}
    assert dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == ("AssetOrTimeSchedule" if cron else "AssetTriggeredTimetable")

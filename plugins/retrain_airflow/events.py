"""Event-driven runs of ``ner_retrain`` (conf ``events``): the incoming asset, its watcher, the schedule,
and the task that waits for a quiet incoming prefix.

- ``incoming_asset``: ``Asset(name="<task>.incoming", uri="s3://<bucket>/<incoming_prefix>")``. With
  ``events.enabled`` it carries an ``AssetWatcher`` whose trigger is the common-messaging
  ``MessageQueueTrigger`` with ``scheme="sqs"``, which hands its keyword arguments to the amazon provider's
  ``SqsSensorTrigger``: the triggerer long-polls ``events.queue_url`` through the connection
  ``events.aws_conn_id`` (default ``airflow.aws_conn_id``; read by the triggerer when it runs the trigger,
  never while parsing), deletes what it received and emits one asset event per batch of messages, with
  ``extra = {"from_trigger": true, "payload": {"status": "success", "message_batch": [<SQS messages>]}}``.
  (The scheme form, not the deprecated ``queue=`` URI form: that one only matches
  ``https://sqs.<region>.amazonaws.com/<account>/<name>``, which rules out a VPC endpoint or a local SQS.)
- ``retrain_schedule``: the cron alone, or ``AssetOrTimeSchedule(cron, incoming asset)`` with events on
  (only the asset when the cron is null).
- ``wait_for_quiet_incoming``: the first task of an event-enabled DAG; logs what the triggering
  notifications said and waits until the prefix is quiet (``retrain.arrivals.wait_for_quiet``).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import Asset, AssetWatcher

from retrain.config import Settings

log = logging.getLogger(__name__)


def incoming_uri(settings: Settings) -> str:
    return f"s3://{settings.s3.bucket}/{settings.s3.incoming_prefix.strip('/')}/"


def queue_trigger(settings: Settings) -> Any:
    """The message-queue trigger of the incoming asset's watcher (events must be enabled)."""
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    cfg = settings.events
    if not cfg.queue_url:
        raise ValueError("events.queue_url is not set")
    return MessageQueueTrigger(
        scheme="sqs",
        sqs_queue=cfg.queue_url,
        aws_conn_id=cfg.aws_conn_id or settings.airflow.aws_conn_id,
        region_name=cfg.region_name,
        max_messages=cfg.max_messages,
        wait_time_seconds=cfg.wait_time_seconds,
        waiter_delay=cfg.poll_delay_seconds,
    )


def incoming_asset(settings: Settings) -> Asset:
    """The incoming prefix as an asset; watched by the queue trigger when events are enabled."""
    watchers = []
    if settings.events.enabled:
        watchers = [AssetWatcher(name=f"{settings.task}.incoming-queue", trigger=queue_trigger(settings))]
    return Asset(
        name=f"{settings.task}.incoming", uri=incoming_uri(settings), group="dataset", watchers=watchers
    )


def retrain_schedule(settings: Settings) -> Any:
    """``schedule=`` of ner_retrain: the cron, or the cron OR the incoming asset when events are on."""
    cron = settings.schedule.cron
    if not settings.events.enabled:
        return cron
    asset = incoming_asset(settings)
    if cron is None:
        return [asset]
    from airflow import settings as airflow_settings
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    # what a plain cron string becomes: a CronTriggerTimetable in Airflow's default timezone
    timetable = CronTriggerTimetable(cron, timezone=airflow_settings.TIMEZONE)
    return AssetOrTimeSchedule(timetable=timetable, assets=asset)


def triggering_notifications(settings: Settings, context: Any) -> Any:
    """The S3 notifications carried by the incoming-asset events that triggered this run."""
    from retrain.arrivals import parse_asset_event_extras

    events = context["triggering_asset_events"].get(incoming_asset(settings), [])
    return parse_asset_event_extras(e.extra for e in events)


def wait_for_quiet_incoming() -> dict[str, Any]:
    """Task callable: wait until the incoming prefix is quiet; return what triggered the run and the wait."""
    from airflow.sdk import get_current_context

    from retrain.arrivals import wait_for_quiet
    from retrain_airflow.s3 import object_store
    from retrain_airflow.tasks import settings

    s = settings()
    context = get_current_context()
    notes = triggering_notifications(s, context)
    summary = notes.summary()
    log.info(
        "run %s (%s): %d created, %d removed in the triggering notifications; %d test events; unreadable: %s",
        context["run_id"],
        context["dag_run"].run_type,
        summary["created"],
        summary["removed"],
        notes.test_events,
        notes.unreadable,
    )
    outcome = wait_for_quiet(object_store(s), s, notes.newest)
    if not outcome.quiet:
        log.warning(
            "incoming prefix still changing after %ss (events.max_wait_seconds): ingesting what is there",
            s.events.max_wait_seconds,
        )
    return {"notifications": summary, "wait": outcome.to_json()}

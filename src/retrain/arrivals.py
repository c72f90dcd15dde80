"""Arrivals under the incoming prefix: S3 event notifications, and the quiet period before intake.

Event-driven runs (conf ``events``): the bucket sends ``s3:ObjectCreated:*`` / ``s3:ObjectRemoved:*``
notifications for the incoming prefix to a queue; Airflow's triggerer turns each batch of messages into
an asset event whose extra carries them. ``parse_trigger_payload`` reads that payload back into typed
``ObjectEvent``s (for the run's log and for the stages that act on removals).

A burst of uploads must start one intake, not one per file: ``wait_for_quiet`` returns once nothing under
the incoming prefix was added, replaced or removed for ``events.quiet_period_seconds`` (or after
``events.max_wait_seconds`` of continuous change). The listing is the ground truth, not the messages:
a lost or duplicated notification changes nothing, since the ledger decides what is ingested.

Nothing here imports Airflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from retrain.config import Settings
from retrain.storage import ObjectStore

log = logging.getLogger(__name__)

CREATED = "created"
REMOVED = "removed"


@dataclass(frozen=True)
class ObjectEvent:
    """One S3 event notification record (AWS S3, or MinIO's identical JSON)."""

    kind: str  # CREATED | REMOVED
    name: str  # the event name without "s3:", e.g. ObjectCreated:Put, ObjectRemoved:Delete
    bucket: str
    key: str  # URL-decoded (notifications carry the key form-encoded: spaces as "+")
    etag: str  # "" for removals
    size: int | None
    time: datetime | None
    message_id: str = ""


@dataclass
class Notifications:
    """What a batch of queue messages said: object events, S3 test events, unreadable messages."""

    events: list[ObjectEvent] = field(default_factory=list)
    test_events: int = 0  # s3:TestEvent, sent once when a bucket notification is configured
    unreadable: list[str] = field(default_factory=list)  # "<message id>: <why>"

    def extend(self, other: Notifications) -> None:
        self.events += other.events
        self.test_events += other.test_events
        self.unreadable += other.unreadable

    @property
    def newest(self) -> datetime | None:
        times = [e.time for e in self.events if e.time is not None]
        return max(times) if times else None

    def keys(self, kind: str) -> list[str]:
        return sorted({e.key for e in self.events if e.kind == kind})

    def summary(self, limit: int = 20) -> dict[str, Any]:
        """Counts and the first ``limit`` keys of each kind: small enough for a log line or XCom."""
        created, removed = self.keys(CREATED), self.keys(REMOVED)
        return {
            "created": len(created),
            "removed": len(removed),
            "created_keys": created[:limit],
            "removed_keys": removed[:limit],
            "test_events": self.test_events,
            "unreadable": self.unreadable[:limit],
            "newest_event": self.newest.isoformat() if self.newest else None,
        }


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _record_event(record: dict[str, Any], message_id: str) -> ObjectEvent | None:
    name = str(record.get("eventName", "")).removeprefix("s3:")
    kind = (
        CREATED if name.startswith("ObjectCreated") else REMOVED if name.startswith("ObjectRemoved") else ""
    )
    s3 = record.get("s3") or {}
    obj, bucket = s3.get("object") or {}, s3.get("bucket") or {}
    if not kind or not isinstance(obj.get("key"), str):
        return None
    size = obj.get("size")
    return ObjectEvent(
        kind=kind,
        name=name,
        bucket=str(bucket.get("name", "")),
        key=unquote_plus(obj["key"]),
        etag=str(obj.get("eTag") or obj.get("etag") or "").strip('"'),
        size=int(size) if isinstance(size, int | float) else None,
        time=_parse_time(record.get("eventTime")),
        message_id=message_id,
    )


def parse_notification_body(body: str, message_id: str = "") -> Notifications:
    """One queue message body: an S3 notification (``{"Records": [...]}``), the same wrapped in an SNS
    envelope (``{"Type": "Notification", "Message": "<json>"}``), or an ``s3:TestEvent``."""
    out = Notifications()
    where = message_id or "?"
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        out.unreadable.append(f"{where}: body is not JSON ({exc})")
        return out
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_notification_body(doc["Message"], message_id)
    if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
        out.test_events += 1
        return out
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        out.unreadable.append(f"{where}: no Records list (not an S3 event notification)")
        return out
    for i, record in enumerate(records):
        event = _record_event(record, message_id) if isinstance(record, dict) else None
        if event is None:
            out.unreadable.append(f"{where}: record {i} is not an object-created/removed event")
        else:
            out.events.append(event)
    return out


def parse_trigger_payload(payload: dict[str, Any] | None) -> Notifications:
    """The payload of the SQS trigger's event, as stored in the asset event's ``extra["payload"]``:
    ``{"status": "success", "message_batch": [<SQS message: MessageId, ReceiptHandle, MD5OfBody, Body>]}``."""
    out = Notifications()
    for message in (payload or {}).get("message_batch") or []:
        if not isinstance(message, dict):
            out.unreadable.append(f"?: message is a {type(message).__name__}, not an SQS message")
            continue
        out.extend(parse_notification_body(message.get("Body", ""), str(message.get("MessageId", ""))))
    return out


def parse_asset_event_extras(extras: Iterable[dict[str, Any] | None]) -> Notifications:
    """All notifications in the extras of the asset events that triggered a run."""
    out = Notifications()
    for extra in extras:
        out.extend(parse_trigger_payload((extra or {}).get("payload")))
    return out


# -- the quiet period ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class IncomingState:
    """A listing of the incoming prefix, reduced to what tells a change: the (key, ETag) set."""

    objects: int
    fingerprint: str
    newest: datetime | None  # newest LastModified (S3's clock)


def incoming_state(store: ObjectStore, settings: Settings) -> IncomingState:
    """List the incoming prefix (paginated) and fingerprint it."""
    digest = hashlib.sha256()
    count, newest = 0, None
    for obj in store.iter_objects(settings.s3.incoming_prefix, page_size=settings.intake.page_size):
        count += 1
        digest.update(f"{obj.key}\0{obj.etag}\n".encode("utf-8", "surrogatepass"))
        modified = _parse_time(obj.last_modified.replace(" ", "T")) if obj.last_modified else None
        if modified is not None and (newest is None or modified > newest):
            newest = modified
    return IncomingState(objects=count, fingerprint=digest.hexdigest(), newest=newest)


@dataclass(frozen=True)
class QuietOutcome:
    quiet: bool  # False: max_wait_seconds ran out while the prefix was still changing
    waited_seconds: float
    idle_seconds: float  # how long nothing had changed when the wait ended
    checks: int  # listings made
    changes: int  # listings that differed from the one before
    objects: int

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def wait_for_quiet(
    store: ObjectStore,
    settings: Settings,
    last_event_at: datetime | None = None,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> QuietOutcome:
    """Return once nothing under the incoming prefix changed for ``events.quiet_period_seconds``.

    The last change is first taken as the newest of the objects' LastModified and ``last_event_at``
    (the newest notification, which also covers removals), capped at now against clock skew; then every
    ``check_interval_seconds`` the prefix is listed again, and a listing that differs from the previous
    one restarts the quiet period. After ``max_wait_seconds`` it returns with ``quiet=False``."""
    cfg = settings.events
    start = clock()
    state = incoming_state(store, settings)
    seen = [t.timestamp() for t in (state.newest, last_event_at) if t is not None]
    last_change = min(start, max(seen)) if seen else float("-inf")
    checks, changes = 1, 0
    while True:
        now = clock()
        idle = now - last_change
        if idle >= cfg.quiet_period_seconds or now - start >= cfg.max_wait_seconds:
            outcome = QuietOutcome(
                quiet=idle >= cfg.quiet_period_seconds,
                waited_seconds=now - start,
                idle_seconds=min(idle, 10.0**9),
                checks=checks,
                changes=changes,
                objects=state.objects,
            )
            log.info("incoming prefix %s: %s", store.uri(settings.s3.incoming_prefix), outcome.to_json())
            return outcome
        remaining = min(cfg.quiet_period_seconds - idle, cfg.max_wait_seconds - (now - start))
        sleep(max(0.0, min(cfg.check_interval_seconds, remaining)))
        latest = incoming_state(store, settings)
        checks += 1
        if latest.fingerprint != state.fingerprint:
            changes += 1
            last_change = clock()
            log.info(
                "incoming prefix changed (%d -> %d objects): quiet period restarts",
                state.objects,
                latest.objects,
            )
        state = latest

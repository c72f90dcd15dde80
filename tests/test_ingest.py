"""Intake against a real S3 API (moto server): ledger, change detection, accounting, idempotency."""

import json

from retrain.ingest import find_new_batches, object_slug, process_batches, read_ledger, safe_run_id
from tests.support.synth import make_batch


def _put(store, key, lines):
    store.put_bytes(key, ("\n".join(lines) + "\n").encode("utf-8"))


def test_new_then_nothing_then_changed(store, settings):
    _put(store, "incoming/a.json", make_batch(30, seed=1, bad=5))
    plan = find_new_batches(store, settings)
    assert [(o.key, o.change) for o in plan.objects] == [("incoming/a.json", "new")]

    result = process_batches(store, settings, plan.objects, "manual__2026-11-29T00:00:00+00:00")
    assert result.read == 35
    assert result.accepted + result.quarantined == result.read
    assert result.quarantined >= 5  # every deliberately broken record is quarantined
    assert read_ledger(store, settings)["incoming/a.json"]["etag"] == plan.objects[0].etag

    plan2 = find_new_batches(store, settings)
    assert plan2.objects == [] and plan2.dataset_pending  # accepted data not yet trained on

    _put(store, "incoming/a.json", make_batch(31, seed=1))  # a corrected re-upload
    plan3 = find_new_batches(store, settings)
    assert [(o.change, o.previous_etag) for o in plan3.objects] == [("changed", plan.objects[0].etag)]


def test_quarantine_keeps_every_rejected_record_with_reason(store, settings):
    _put(store, "incoming/b.json", make_batch(10, seed=3, bad=5))
    plan = find_new_batches(store, settings)
    result = process_batches(store, settings, plan.objects, "run1")
    q_key = f"quarantine/{safe_run_id('run1')}/{object_slug('incoming/b.json')}.jsonl"
    rows = [json.loads(line) for line in store.get_bytes(q_key).decode().splitlines()]
    assert len(rows) == result.quarantined
    assert all(r["source_key"] == "incoming/b.json" and r["line"] >= 1 and r["reason"] for r in rows)
    report = store.get_bytes(f"quarantine/{safe_run_id('run1')}/report.md").decode()
    assert "incoming/b.json" in report and "quarantined" in report


def test_reprocessing_the_same_object_is_idempotent(store, settings):
    _put(store, "incoming/c.json", make_batch(12, seed=4, bad=1))
    plan = find_new_batches(store, settings)
    first = process_batches(store, settings, plan.objects, "run1")
    again = process_batches(store, settings, plan.objects, "run1")  # a cleared and re-run task
    accepted = list(store.iter_objects(settings.s3.accepted_prefix))
    assert len(accepted) == 1 and first.accepted == again.accepted


def test_traversal_key_stays_under_its_prefixes(store, settings):
    _put(store, "incoming/../../etc/x.json", make_batch(3, seed=5))
    plan = find_new_batches(store, settings)
    process_batches(store, settings, plan.objects, "run/../../x")
    keys = [o.key for o in store.iter_objects("")]
    assert not any(".." in k.split("/") for k in keys if not k.startswith("incoming/"))
    assert all(
        k.startswith(("incoming/", "accepted/", "quarantine/", "reports/", "runs/", "state/")) for k in keys
    )

"""Repeated exports through intake: CLUENER train concatenated ten times (read in place from
../shared, never copied into the repository) on the moto S3 server."""

from __future__ import annotations

import json

from retrain.ingest import find_new_batches, process_batches


def test_train_pasted_ten_times_keeps_every_unique_record(cluener_dir, store, settings):
    train = (cluener_dir / "train.json").read_bytes()
    unique = sum(1 for line in train.splitlines() if line.strip())
    assert unique == 10_748
    store.put_bytes("incoming/train_x10.json", train * 10)
    plan = find_new_batches(store, settings)

    result = process_batches(store, settings, plan.objects, "manual__dups")

    (o,) = result.objects
    assert (o.read, o.accepted, o.quarantined) == (107_480, 10_748, 96_732)
    assert not o.batch_quarantined
    # the repeats are reported (one quarantine row each, naming the kept line), not bad rows
    assert o.reasons == {"duplicate_record": 96_732}
    rows = [json.loads(x) for x in store.get_bytes(o.quarantine_uri.split("/", 3)[3]).splitlines()]
    assert len(rows) == 96_732
    first = rows[0]
    assert (first["line"], first["reason"]) == (10_749, "duplicate_record")
    assert "as line 1 (kept)" in first["detail"]
    accepted = store.get_bytes(o.accepted_uri.split("/", 3)[3]).splitlines()
    assert len(accepted) == 10_748
    assert max(json.loads(a)["line"] for a in accepted) == 10_748  # the first copy is the one kept
    report = store.get_bytes(result.report_uri.split("/", 3)[3]).decode()
    assert "duplicate_record: 96732" in report and "whole batch quarantined" not in report

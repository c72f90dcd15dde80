"""Intake in bounded chunks against a real S3 API (moto server) and real Great Expectations:
every record accepted or quarantined with its reason across chunk boundaries, the batch rules
judged on the whole object, array size limit, and the ledger committed object by object."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from retrain.ingest import find_new_batches, object_slug, process_batches, read_ledger, safe_run_id
from tests.support.synth import make_batch

TRUNCATED = '{"text": "这一行被截断了", "label": {'  # parse: truncated
EMPTY = json.dumps({"text": "", "label": {}})  # parse: empty_text
TOO_LONG = json.dumps({"text": "长" * 500, "label": {}}, ensure_ascii=False)  # GX: longer than max_text_chars


def _intake(settings, **changes: Any):
    return settings.model_copy(update={"intake": settings.intake.model_copy(update=changes)})


def _put(store, key: str, lines: list[str]) -> None:
    store.put_bytes(key, ("\n".join(lines) + "\n").encode("utf-8"))


def _outcomes(store, settings, run_id: str, key: str) -> dict[int, str]:
    """line -> "accepted" or the quarantine reason, read back from what intake stored."""
    slug = object_slug(key)
    out: dict[int, str] = {}
    for name, reason in (
        (f"{settings.s3.accepted_prefix}{slug}.jsonl", None),
        (f"{settings.s3.quarantine_prefix}{safe_run_id(run_id)}/{slug}.jsonl", "reason"),
    ):
        for line in store.get_bytes(name).decode("utf-8").splitlines():
            row = json.loads(line)
            assert row["line"] not in out, f"line {row['line']} stored twice"
            out[row["line"]] = row[reason] if reason else "accepted"
    return out


def test_bad_lines_at_chunk_boundaries_are_each_accounted_for_once(store, settings):
    chunked = _intake(settings, chunk_records=10)
    lines = make_batch(40, seed=21)
    # 1-based lines 10 and 11 end and start a chunk; 20 ends one; 30 (GX reject) ends one too.
    lines[9], lines[10], lines[19], lines[29] = TRUNCATED, EMPTY, TRUNCATED, TOO_LONG
    _put(store, "incoming/chunked.json", lines)
    plan = find_new_batches(store, chunked)
    result = process_batches(store, chunked, plan.objects, "run-chunked")
    (o,) = result.objects
    assert o.read == 40 and o.accepted + o.quarantined == 40 and not o.batch_quarantined
    got = _outcomes(store, chunked, "run-chunked", "incoming/chunked.json")
    assert sorted(got) == list(range(1, 41))  # every line exactly once, accepted or quarantined
    assert got[10] == got[20] == "truncated" and got[11] == "empty_text"
    assert got[30].startswith("gx:") and got[9] == got[12] == got[31] == "accepted"
    assert sum(v == "accepted" for v in got.values()) == o.accepted
    # Data Docs keep the first chunk and the one with a GX rejection (line 30), not the other two.
    assert o.docs_uri and any("Data Docs show 2 of 4 chunks" in w for w in o.warnings), o.warnings

    # The same bytes in one chunk give the same outcome for every line.
    _put(store, "incoming/whole.json", lines)
    whole = _intake(settings, chunk_records=10_000)
    process_batches(store, whole, find_new_batches(store, whole).objects, "run-whole")
    assert _outcomes(store, whole, "run-whole", "incoming/whole.json") == got


def test_bad_share_is_judged_over_all_chunks(store, settings):
    s = _intake(settings, chunk_records=10)  # validation.max_bad_fraction = 0.5
    # First chunk all bad, the rest good: 10/30 bad overall -> the batch passes.
    _put(store, "incoming/bad-first.json", [TRUNCATED] * 10 + make_batch(20, seed=22))
    # First chunk good, then all bad: 20/30 bad overall -> the whole batch is quarantined,
    # the first chunk's records (already accepted by their chunk) included.
    _put(store, "incoming/bad-later.json", make_batch(10, seed=23) + [EMPTY] * 20)
    result = process_batches(store, s, find_new_batches(store, s).objects, "run-share")
    by_key = {o.key: o for o in result.objects}

    first = by_key["incoming/bad-first.json"]
    assert (first.read, first.quarantined, first.batch_quarantined) == (30, 10, False)
    assert first.accepted == 20

    later = by_key["incoming/bad-later.json"]
    assert (later.read, later.accepted, later.quarantined, later.batch_quarantined) == (30, 0, 30, True)
    assert later.reasons == {"empty_text": 20, "batch_quarantined": 10}
    got = _outcomes(store, s, "run-share", "incoming/bad-later.json")
    assert sorted(got) == list(range(1, 31))
    assert {got[i] for i in range(1, 11)} == {"batch_quarantined"}
    rows = store.get_bytes(f"quarantine/{safe_run_id('run-share')}/{object_slug(later.key)}.jsonl")
    detail = [json.loads(x)["detail"] for x in rows.decode().splitlines() if '"batch_quarantined"' in x][0]
    assert "bad_fraction" in detail  # the rule that sank the batch, with its figure


def test_json_array_above_the_limit_is_quarantined_naming_the_file(store, settings):
    tasks = [{"data": {"text": f"张伟在上海工作{i}。"}, "annotations": []} for i in range(200)]
    data = json.dumps(tasks, ensure_ascii=False).encode("utf-8")
    store.put_bytes("incoming/ls/export.json", data)
    _put(store, "incoming/lines.json", make_batch(12, seed=24))
    s = _intake(settings, max_object_bytes=len(data) // 2, chunk_records=5)
    result = process_batches(store, s, find_new_batches(store, s).objects, "run-array")
    by_key = {o.key: o for o in result.objects}
    big = by_key["incoming/ls/export.json"]
    assert (big.read, big.quarantined, big.reasons) == (1, 1, {"object_too_large": 1})
    (row,) = [
        json.loads(x) for x in store.get_bytes(big.quarantine_uri.split("/", 3)[3]).decode().splitlines()
    ]
    assert row["line"] == 0 and "incoming/ls/export.json" in row["detail"]
    assert "max_object_bytes" in row["detail"]
    assert by_key["incoming/lines.json"].accepted == 12  # the other object is not held up
    assert set(read_ledger(store, s)) == {"incoming/ls/export.json", "incoming/lines.json"}


def test_each_object_is_committed_when_done_so_a_failing_one_blocks_no_other(store, settings):
    _put(store, "incoming/a.json", make_batch(15, seed=25))
    _put(store, "incoming/b.json", make_batch(15, seed=26))
    _put(store, "incoming/c.json", make_batch(15, seed=27))
    plan = find_new_batches(store, settings)
    store.delete("incoming/b.json")  # gone between listing and reading: its download fails
    with pytest.raises(ClientError):
        process_batches(store, settings, plan.objects, "run-fail")
    ledger = read_ledger(store, settings)
    assert set(ledger) == {"incoming/a.json"}  # a is committed; b failed; c was never reached
    intake = store.get_json(f"runs/{safe_run_id('run-fail')}/intake.json")
    assert [(o["key"], o["read"]) for o in intake["objects"]] == [("incoming/a.json", 15)]
    assert store.exists("state/dataset_pending.json")

    # The next run: a is not read again, c is, and b is a retraction only if the ledger had it.
    plan2 = find_new_batches(store, settings)
    assert [o.key for o in plan2.objects] == ["incoming/c.json"] and plan2.removed == []
    # A retry of the failed run with its original plan skips a (already committed) and keeps
    # its outcome; b still fails, c is not lost.
    with pytest.raises(ClientError):
        process_batches(store, settings, plan.objects, "run-fail")
    result = process_batches(store, settings, plan2.objects, "run-next")
    assert [o.key for o in result.objects] == ["incoming/c.json"]
    assert set(read_ledger(store, settings)) == {"incoming/a.json", "incoming/c.json"}

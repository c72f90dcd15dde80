"""Retractions against a real S3 API (moto server) and real Great Expectations: an object removed
from the incoming prefix takes its records out of the next dataset version, with the ledger,
intake.json, the report and the manifest saying what was removed; corrected re-uploads still win."""

from __future__ import annotations

import json

from retrain.dataset import build_dataset, split_of
from retrain.ingest import (
    RemovedObject,
    find_new_batches,
    object_slug,
    process_batches,
    read_ledger,
    retract_object,
    safe_run_id,
)
from tests.support.synth import make_batch


def _put(store, key: str, lines: list[str]) -> None:
    store.put_bytes(key, ("\n".join(lines) + "\n").encode("utf-8"))


def _night(store, settings, run_id: str):
    plan = find_new_batches(store, settings)
    return plan, process_batches(store, settings, plan.objects, run_id, removed=plan.removed)


def _inputs(store, res, names=("train.json", "validation.json", "golden.json")) -> set[str]:
    prefix = res.uri.split("/", 3)[3]
    return {e["input"] for name in names for e in json.loads(store.get_bytes(prefix + name))}


def _texts(lines: list[str]) -> set[str]:
    return {json.loads(x)["text"] for x in lines}


def test_removed_object_leaves_the_next_dataset_and_is_recorded(store, settings):
    a, b = make_batch(60, seed=31), make_batch(60, seed=32)
    _put(store, "incoming/a.json", a)
    _put(store, "incoming/b.json", b)
    _, first = _night(store, settings, "night1")
    accepted_a = next(o.accepted for o in first.objects if o.key == "incoming/a.json")
    etag_a = read_ledger(store, settings)["incoming/a.json"]["etag"]
    v1 = build_dataset(store, settings)
    only_a = _texts(a) - _texts(b)
    assert only_a <= _inputs(store, v1) and v1.retracted == 0

    store.delete("incoming/a.json")  # the annotators withdraw a.json
    plan = find_new_batches(store, settings)
    assert plan.objects == [] and plan.removed == [RemovedObject("incoming/a.json", etag_a)] and plan.has_work
    result = process_batches(store, settings, plan.objects, "night2", removed=plan.removed)

    (r,) = result.retractions
    assert (r.key, r.etag, r.records, r.processed_by_run) == ("incoming/a.json", etag_a, accepted_a, "night1")
    assert result.retracted == accepted_a
    entry = read_ledger(store, settings)["incoming/a.json"]
    assert entry["retracted"] is True and entry["retracted_by_run"] == "night2"
    assert entry["retracted_records"] == accepted_a and entry["retracted_at"]
    kept = store.get_bytes(entry["retracted_uri"].split("/", 3)[3]).decode().splitlines()
    assert len(kept) == accepted_a and {json.loads(x)["source_key"] for x in kept} == {"incoming/a.json"}
    assert not store.exists(f"accepted/{object_slug('incoming/a.json')}.jsonl")
    assert store.exists("state/dataset_pending.json")  # the data changed: the next run trains
    assert store.get_json(f"runs/{safe_run_id('night2')}/intake.json")["retracted"] == accepted_a
    report = store.get_bytes(f"quarantine/{safe_run_id('night2')}/report.md").decode()
    assert "Retracted" in report and "incoming/a.json" in report

    v2 = build_dataset(store, settings)
    assert v2.version != v1.version and v2.retracted == accepted_a
    assert not only_a & _inputs(store, v2)  # none of a's sentences, in any split
    assert _inputs(store, v2) == _texts(b)  # b's sentences all stay
    manifest = store.get_json(v2.uri.split("/", 3)[3] + "manifest.json")
    assert manifest["retracted"]["records"] == accepted_a
    assert [o["key"] for o in manifest["retracted"]["objects"]] == ["incoming/a.json"]
    assert [s["key"] for s in manifest["sources"]] == ["incoming/b.json"]

    # Seen once: the next listing reports no removal; an identical re-upload is new data again.
    assert find_new_batches(store, settings).removed == []
    _put(store, "incoming/a.json", a)
    again = find_new_batches(store, settings)
    assert [(o.key, o.change) for o in again.objects] == [("incoming/a.json", "new")]
    process_batches(store, settings, again.objects, "night3", removed=again.removed)
    assert only_a <= _inputs(store, build_dataset(store, settings))


def test_retracted_golden_sentence_changes_the_golden_set(store, settings):
    cfg = settings.dataset
    pool = make_batch(300, seed=33)

    def split(line: str) -> str:
        return split_of(
            json.loads(line)["text"], cfg.split_seed, cfg.validation_fraction, cfg.golden_fraction
        )

    golden = [x for x in pool if split(x) == "golden"]
    assert len(golden) >= 4
    texts_g = _texts(golden[:2])
    rest = [x for x in pool if json.loads(x)["text"] not in texts_g]
    _put(store, "incoming/z-golden.json", golden[:2])  # two golden sentences only this object holds
    _put(store, "incoming/a-rest.json", rest)
    _night(store, settings, "n1")
    v1 = build_dataset(store, settings)
    assert texts_g <= _inputs(store, v1, ("golden.json",))

    store.delete("incoming/z-golden.json")
    _, result = _night(store, settings, "n2")
    assert result.retracted == 2
    v2 = build_dataset(store, settings)
    assert v2.golden_hash != v1.golden_hash and v2.golden == v1.golden - 2
    assert not texts_g & _inputs(store, v2)
    assert _inputs(store, v2, ("train.json",)) == _inputs(store, v1, ("train.json",))  # train untouched


def test_correction_and_retraction_in_the_same_run(store, settings):
    base = make_batch(40, seed=34)
    wrong = {"text": "王芳在杭州见到了李娜。", "label": {"name": {"王芳": [[0, 1]]}}}
    fixed = {"text": "王芳在杭州见到了李娜。", "label": {"name": {"王芳": [[0, 1]], "李娜": [[8, 9]]}}}
    _put(store, "incoming/a.json", base[:20] + [json.dumps(wrong, ensure_ascii=False)])
    _put(store, "incoming/b.json", base[20:])
    _night(store, settings, "r1")

    # a.json corrected (same key, new ETag, one sentence dropped) and b.json withdrawn, same night.
    _put(store, "incoming/a.json", base[:10] + [json.dumps(fixed, ensure_ascii=False)])
    store.delete("incoming/b.json")
    plan, result = _night(store, settings, "r2")
    assert [(o.key, o.change) for o in plan.objects] == [("incoming/a.json", "changed")]
    assert [r.key for r in plan.removed] == ["incoming/b.json"]
    assert result.retracted == 20 and result.objects[0].accepted == 11

    res = build_dataset(store, settings)
    seen = _inputs(store, res)
    assert seen == _texts(base[:10]) | {fixed["text"]}  # b gone; a's dropped sentences gone
    prefix = res.uri.split("/", 3)[3]
    rows = [
        e
        for n in ("train.json", "validation.json", "golden.json")
        for e in json.loads(store.get_bytes(prefix + n))
    ]
    (target,) = [e for e in rows if e["input"] == fixed["text"]]
    assert json.loads(target["output"]) == [
        {"label": "name", "text": "王芳"},
        {"label": "name", "text": "李娜"},
    ]
    assert res.retracted == 20


def test_interrupted_retraction_is_completed_with_its_count(store, settings):
    _put(store, "incoming/a.json", make_batch(25, seed=35))
    _put(store, "incoming/b.json", make_batch(25, seed=36))
    _night(store, settings, "r1")
    store.delete("incoming/a.json")
    plan = find_new_batches(store, settings)
    # A first attempt moved the records out, then died before the ledger was written.
    moved = retract_object(store, settings, plan.removed[0], "r2")
    assert moved.records == 25 and read_ledger(store, settings)["incoming/a.json"].get("retracted") is None
    again = find_new_batches(store, settings)
    assert [r.key for r in again.removed] == ["incoming/a.json"]
    result = process_batches(store, settings, again.objects, "r3", removed=again.removed)
    assert result.retracted == 25  # found where the first attempt put them
    # The same plan once more (a retried task): nothing is retracted twice.
    repeat = process_batches(store, settings, again.objects, "r3", removed=again.removed)
    assert (
        repeat.retracted == 25 and read_ledger(store, settings)["incoming/a.json"]["retracted_by_run"] == "r3"
    )
    assert build_dataset(store, settings).retracted == 25


def test_retract_removed_off_keeps_the_records(store, settings):
    s = settings.model_copy(update={"intake": settings.intake.model_copy(update={"retract_removed": False})})
    _put(store, "incoming/a.json", make_batch(20, seed=37))
    _night(store, s, "r1")
    store.delete("incoming/a.json")
    plan = find_new_batches(store, s)
    assert plan.removed == [] and not plan.objects
    assert build_dataset(store, s).retracted == 0

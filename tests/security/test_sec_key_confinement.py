"""S3 keys are untrusted (annotators name the files; anyone with write access to the bucket can add
objects under a run's prefix): nothing they hold may make a stage write outside the run's prefixes
in S3 or outside its work directory on disk.

- `storage.join_key` refuses parts that climb out of their prefix; `storage.safe_local_path`
  refuses relative keys that land outside the work directory, symlinks included;
- the downloads of every stage (`download_prefix`: dataset for training, run artifacts for
  promotion; `evaluate.fetch_adapter`) meet hostile keys under the prefix they read;
- an intake run over objects with hostile keys, under a hostile run id, writes only under the
  configured prefixes and only inside its work directory.
(The UI's S3 proxy refuses such keys too: tests/plugins/test_ui.py::test_s3_proxy_refuses_dot_dot_keys.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HOSTILE_PARTS = ["../x", "a/../../x", "/etc/passwd", "a\x00b", ".", "a/./b", "..", "a/.."]


@pytest.mark.parametrize("part", HOSTILE_PARTS)
def test_join_key_refuses_parts_that_leave_the_prefix(part):
    from retrain.storage import UnsafeKeyError, join_key

    with pytest.raises(UnsafeKeyError):
        join_key("runs/r1", part)


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "/etc/passwd", "a/../../b", "a\x00", "..", ".", "a/../.."]
)
def test_safe_local_path_refuses_keys_outside_the_work_dir(tmp_path, key):
    from retrain.storage import UnsafeKeyError, safe_local_path

    with pytest.raises(UnsafeKeyError):
        safe_local_path(tmp_path / "work", key)


def test_safe_local_path_follows_symlinks_before_judging(tmp_path):
    from retrain.storage import UnsafeKeyError, safe_local_path

    root = tmp_path / "work"
    root.mkdir()
    (root / "link").symlink_to(tmp_path.parent)  # planted by an earlier, compromised step
    assert safe_local_path(root, "a/b/../c") == (root / "a" / "c").resolve()
    with pytest.raises(UnsafeKeyError):
        safe_local_path(root, "link/escape.txt")


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture
def hostile_run(store):
    """A run prefix holding legitimate files and objects whose keys climb out of it."""
    for key in (
        "runs/r1/adapter/adapter_model.safetensors",
        "runs/r1/adapter/adapter_config.json",
        "datasets/v1/dataset_info.json",
        "datasets/v1/train.json",
    ):
        store.put_bytes(key, b"{}")
    for key in (
        "runs/r1/adapter/../../../../escape.txt",
        "runs/r1/adapter/..",
        "datasets/v1/../../../../escape.txt",
        "datasets/v1//etc/cron.d/x",
    ):
        store.put_bytes(key, b"pwned")
    return store


def test_downloads_never_write_outside_their_directory(hostile_run, tmp_path):
    from retrain.evaluate import fetch_adapter
    from retrain.storage import ObjectStore, UnsafeKeyError
    from retrain.train import TrainingFailed, download_dataset

    store: ObjectStore = hostile_run
    box = tmp_path / "a" / "b" / "c" / "d"  # deep enough for every ../ of the hostile keys
    box.mkdir(parents=True)
    before = _tree(tmp_path)

    with pytest.raises(UnsafeKeyError):  # promotion's download of a run's artifacts
        store.download_prefix("runs/r1/adapter", box / "promote")
    with pytest.raises((UnsafeKeyError, TrainingFailed)):  # the train stage's dataset download
        download_dataset(store, store.uri("datasets/v1/"), box / "train")
    try:  # evaluation fetches the adapter's top-level files only
        fetch_adapter(lambda bucket: store, store.uri("runs/r1/adapter/"), box / "eval")
    except (OSError, FileNotFoundError):
        pass

    created = _tree(tmp_path) - before
    assert all(c.startswith(str(box.relative_to(tmp_path))) for c in created), created
    assert not [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.read_bytes() == b"pwned" and not str(p).startswith(str(box))
    ]
    assert not Path("/etc/cron.d/x").exists()


def test_intake_with_hostile_keys_and_run_id_writes_only_under_its_prefixes(store, settings, tmp_path):
    from retrain.ingest import find_new_batches, process_batches
    from tests.support.synth import make_batch

    body = ("\n".join(make_batch(4, seed=3, bad=1)) + "\n").encode()
    hostile = [
        "incoming/../../state/ledger.json",
        "incoming/../accepted/x.jsonl",
        "incoming//etc/passwd",
        "incoming/a/../../../runs/r/train_result.json",
        "incoming/" + "../" * 300 + "z.json",
        "incoming/\u202egnp.json",
        "incoming/%2e%2e/%2e%2e/x.json",
        "incoming/..\\..\\win.json",
    ]
    for key in hostile:
        store.put_bytes(key, body)
    work = tmp_path / "box" / "work"
    work.mkdir(parents=True)
    plan = find_new_batches(store, settings)
    assert sorted(o.key for o in plan.objects) == sorted(hostile)

    result = process_batches(store, settings, plan.objects, "../../../state/x/../..", workdir=work)

    assert len(result.objects) == len(hostile) and result.accepted + result.quarantined == result.read
    prefixes = (
        settings.s3.accepted_prefix,
        settings.s3.quarantine_prefix,
        settings.s3.reports_prefix,
        settings.s3.runs_prefix,
        settings.s3.state_prefix,
    )
    written = [o.key for o in store.iter_objects("") if o.key not in hostile]
    assert written
    for key in written:
        assert key.startswith(prefixes) and ".." not in key.split("/") and "//" not in key, key
    run_folders = {
        k.split("/")[1]
        for k in written
        if k.startswith((settings.s3.quarantine_prefix, settings.s3.runs_prefix))
    }
    assert len(run_folders) == 1, run_folders  # the hostile run id became one safe key segment
    assert sorted(store.get_json("state/ledger.json")["objects"]) == sorted(
        hostile
    )  # the real ledger, intact
    assert (
        os.listdir(tmp_path / "box") == ["work"] and os.listdir(work) == []
    )  # nothing left, nothing outside

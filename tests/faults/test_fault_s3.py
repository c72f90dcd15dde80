"""S3 faults (500 InternalError, 503 SlowDown, connect timeouts) during listing, download and upload
in intake and in the dataset build. A transient fault is absorbed by botocore's retries; a
persistent one fails the task loudly, leaves the ledger where it was (every unprocessed object is
still pending) and never exposes a half-built dataset; a re-run after the fault completes."""

from __future__ import annotations

import pytest

from retrain.ingest import read_ledger
from tests.faults.harness import check_invariants, jsonl


def _client_error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    assert isinstance(exc, ClientError), repr(exc)
    return exc.response["Error"]["Code"]


def test_transient_faults_everywhere_are_retried_and_the_night_completes(pipeline):
    p = pipeline
    p.upload_batch("incoming/2026-11-27/a.json", 60, seed=1, bad=3)
    p.upload_batch("incoming/2026-11-27/b.json", 60, seed=2, bad=2)
    once = [
        ("ListObjectsV2", "incoming/", "503"),
        ("GetObject", "incoming/2026-11-27/b", "500"),
        ("PutObject", "accepted/", "timeout"),
        ("PutObject", "quarantine/", "503"),
        ("GetObject", "accepted/", "500"),
        ("PutObject", "datasets/", "timeout"),
        ("PutObject", "state/ledger.json", "503"),
        ("GetObject", "runs/", "503"),
    ]
    for op, prefix, kind in once:
        p.faults.fail(op, prefix, kind, times=1)

    night = p.run()

    assert night.done, (night.failed_at, night.error)
    assert night.xcom["promote"]["promoted"] and night.xcom["promote"]["version"] == "1"
    assert all(r.failed == 1 for r in p.faults.rules), [
        (r.operation, r.key_prefix, r.failed) for r in p.faults.rules
    ]
    assert night.xcom["validate_batches"]["read"] == 125
    check_invariants(p)


def test_listing_that_keeps_failing_fails_the_intake_check_then_a_rerun_completes(pipeline):
    p = pipeline
    p.upload_batch("incoming/a.json", 60, seed=1, bad=2)
    p.faults.fail("ListObjectsV2", "incoming/", "503")

    night = p.run()

    assert night.failed_at == "find_new_batches"
    assert _client_error_code(night.error) == "SlowDown"
    assert len(p.faults.injected("ListObjectsV2")) == 3  # botocore made its 3 attempts, then gave up
    assert p.keys("state/") == [] and p.keys("accepted/") == []
    check_invariants(p)

    p.faults.clear()
    rerun = p.run(p.night(night.run_id))
    assert rerun.done, rerun.error
    assert rerun.xcom["validate_batches"]["read"] == 62
    check_invariants(p)


@pytest.mark.parametrize(
    ("operation", "prefix", "kind"),
    [
        ("GetObject", "incoming/b", "500"),  # download of the second batch
        ("PutObject", "quarantine/", "timeout"),  # upload of a batch's quarantined records
        ("PutObject", "reports/", "503"),  # GX Data Docs upload
        ("PutObject", "state/dataset_pending.json", "500"),
        ("PutObject", "state/ledger.json", "timeout"),  # everything written but the ledger
    ],
)
def test_intake_fault_leaves_every_object_pending_and_a_retry_ingests_each_record_once(
    pipeline, operation, prefix, kind
):
    p = pipeline
    p.upload_batch("incoming/a.json", 40, seed=1, bad=2)
    p.upload_batch("incoming/b.json", 40, seed=2, bad=3)
    p.faults.fail(operation, prefix, kind)

    night = p.run()

    assert night.failed_at == "validate_batches", (night.failed_at, night.error)
    assert p.faults.injected(operation), "the fault was never hit"
    # Objects are committed one at a time: a fault in the second object's download leaves the
    # first one committed (ledger, intake.json, pending marker); any other fault hits the first
    # object, so nothing is in the ledger and both are still found for the next run.
    if prefix == "incoming/b":
        assert set(read_ledger(p.clean, p.settings)) == {"incoming/a.json"}
        assert p.pending_marker()
    else:
        assert p.keys("state/ledger.json") == []
        assert not p.pending_marker() or prefix == "state/ledger.json"
    check_invariants(p)  # every incoming object in the ledger or pending

    # The Airflow retry of validate_batches (same plan, same run id), the fault gone.
    p.faults.clear()
    p.resume(night, start="validate_batches", until="validate_batches")
    assert night.failed_at is None, night.error
    assert night.xcom["validate_batches"]["read"] == 85
    assert night.xcom["validate_batches"]["accepted"] + night.xcom["validate_batches"]["quarantined"] == 85
    accepted_rows = [r for k in p.keys("accepted/") for r in jsonl(p.clean, k)]
    assert len(accepted_rows) == night.xcom["validate_batches"]["accepted"]  # no record ingested twice
    assert len({(r["source_key"], r["line"]) for r in accepted_rows}) == len(accepted_rows)
    assert p.pending_marker()

    if prefix == "state/ledger.json":  # the full night once; the others stop after intake (time)
        p.resume(night)
        assert night.done, (night.failed_at, night.error)
    check_invariants(p)


def test_dataset_build_faults_never_expose_a_version_without_its_manifest(pipeline):
    p = pipeline
    p.upload_batch("incoming/a.json", 60, seed=3, bad=1)
    night = p.run(until="validate_batches")
    assert night.failed_at is None, night.error

    # 1. listing accepted/ keeps failing: the build fails before writing anything.
    p.faults.fail("ListObjectsV2", "accepted/", "500")
    p.resume(night, until="build_dataset")
    assert night.failed_at == "build_dataset" and _client_error_code(night.error) == "InternalError"
    assert p.keys("datasets/") == []
    p.faults.clear()

    # 2. every file is uploaded but the manifest (the commit) is not: a version folder without
    #    manifest.json is left behind, and the task fails.
    p.faults.fail("PutObject", "datasets/", "503", key_suffix="/manifest.json")
    p.resume(night, until="build_dataset")
    assert night.failed_at == "build_dataset" and _client_error_code(night.error) == "SlowDown"
    (folder,) = {k.split("/")[1] for k in p.keys("datasets/")}
    files = {k.rsplit("/", 1)[1] for k in p.keys(f"datasets/{folder}/")}
    assert "manifest.json" not in files and "train.json" in files
    check_invariants(p)

    # The retry does not take the manifest-less folder for an existing version: it writes it
    # again and commits it; the same content gives the same version.
    p.faults.clear()
    p.resume(night, until="build_dataset")
    assert night.failed_at is None, night.error
    ds = night.xcom["build_dataset"]
    assert ds["version"] == folder and ds["created"] is True
    assert p.clean.exists(f"datasets/{folder}/manifest.json")

    # 3. the rest of the night uses that committed version.
    p.resume(night)
    assert night.done, (night.failed_at, night.error)
    request = p.clean.get_json(f"{night.prefix}/train_request.json")
    assert request["dataset_version"] == folder
    check_invariants(p)

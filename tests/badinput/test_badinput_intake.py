"""Every bad input of the corpus (tests/badinput/corpus.py) through the real intake path:
`retrain.ingest.process_batches` against the moto S3 server, Great Expectations included.

For each object: the run finishes and commits the object to the ledger; every record read is
either accepted or quarantined (accepted + quarantined == read, and the stored files agree); each
quarantined record says why with a documented reason code, the file, the line (pointing at the
offending line) and, for field-level problems, the field; the intake report names the object and
its reasons; nothing is written outside the configured prefixes. Then the case's own expectations
(reason codes, accepted count, field, detail, extra checks) are asserted.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.badinput.corpus import CASES

FIELD_REASONS = {
    "missing_field",
    "unknown_label",
    "offsets_out_of_range",
    "span_text_mismatch",
    "empty_text",
    "no_annotation",
}
WHOLE_OBJECT_REASONS = {
    "empty_object",
    "binary",
    "object_too_large",
    "line_too_long",
    "truncated",
    "not_json",
    "bad_encoding",
    "wrong_type",
}  # those that may be reported at line 0
PARAMS = [
    pytest.param(
        c, id=c.id, marks=[pytest.mark.xfail(strict=True, raises=c.bug_raises, reason=c.bug)] if c.bug else []
    )
    for c in CASES
]


def _jsonl(store, key: str) -> list[dict]:
    return [json.loads(line) for line in store.get_bytes(key).decode("utf-8").splitlines() if line.strip()]


def _line_text(data: bytes, line: int) -> str:
    text = data.split(b"\n")[line - 1]
    if line == 1 and text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    return text.removesuffix(b"\r").decode("utf-8", "replace")


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_is_accounted_for_and_explained(case, moto_server, badinput_table, tmp_path, monkeypatch):
    from retrain.config import load_settings
    from retrain.formats import REASONS
    from retrain.ingest import find_new_batches, process_batches, read_ledger
    from retrain.records import Rejection
    from retrain.storage import ObjectStore

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "home"))
    bucket = f"badinput-{uuid.uuid4().hex[:12]}"
    settings = load_settings(environ={"RETRAIN__S3__BUCKET": bucket})
    if case.intake:
        settings = settings.model_copy(update={"intake": settings.intake.model_copy(update=case.intake)})
    store = ObjectStore(moto_server.client(), bucket)
    store.ensure_bucket()
    data = case.build()
    store.put_bytes(case.object_key, data)
    plan = find_new_batches(store, settings)
    assert [o.key for o in plan.objects] == [case.object_key]  # listed exactly as uploaded

    row = {
        "n": CASES.index(case),
        "case": case.id,
        "format": case.fmt,
        "what": case.what,
        "bytes": len(data),
        "bug": case.bug,
    }
    badinput_table.append(row)
    try:
        result = process_batches(store, settings, plan.objects, "manual__badinput")
    except BaseException as exc:
        row["outcome"] = f"CRASH: {type(exc).__name__}" + (" (known bug, xfail)" if case.bug else "")
        raise
    (o,) = result.objects
    outcome = "whole batch quarantined" if o.batch_quarantined and o.accepted == 0 and o.read > 1 else "ok"
    if case.bug:
        outcome = "hostile record accepted (known gap, xfail)"
    row.update(
        read=o.read, accepted=o.accepted, quarantined=o.quarantined, reasons=o.reasons, outcome=outcome
    )

    # The run finished: the object is committed and will not be read again.
    assert read_ledger(store, settings)[case.object_key]["etag"] == plan.objects[0].etag
    assert find_new_batches(store, settings).objects == []
    # Accounting, in the result and in the stored files.
    assert o.read >= 1 and o.accepted + o.quarantined == o.read
    quarantined = _jsonl(store, o.quarantine_uri.split("/", 3)[3])
    accepted = _jsonl(store, o.accepted_uri.split("/", 3)[3])
    assert len(quarantined) == o.quarantined and len(accepted) == o.accepted
    assert all(a["source_key"] == case.object_key and a["text"].strip() for a in accepted)
    # Each rejection says why: a documented code, the file, the line and (when it is one) the field.
    is_array = data.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"[")
    for q in quarantined:
        assert q["source_key"] == case.object_key
        assert (
            q["reason"] in REASONS or q["reason"].startswith("gx:") or q["reason"] == "batch_quarantined"
        ), q
        assert q["detail"].strip(), q
        assert isinstance(q["line"], int) and q["line"] >= 0, q
        assert q["line"] > 0 or q["reason"] in WHOLE_OBJECT_REASONS | {"empty_object"}, q
        message = Rejection(**q).message()
        assert message.startswith(f"{case.object_key}:{q['line']}") and q["reason"] in message
        if q["reason"] in FIELD_REASONS or q["reason"].startswith("gx:"):
            assert q["field"], q
        if q["reason"] in REASONS and q["line"] > 0 and not is_array and q["raw"]:
            head = q["raw"].removesuffix("…")[:60]
            assert head in _line_text(data, q["line"]), (
                q["line"],
                head,
            )  # the line named is the offending one
    if o.batch_quarantined:
        assert o.accepted == 0
    report = store.get_bytes(result.report_uri.split("/", 3)[3]).decode("utf-8")
    assert case.object_key in report and all(reason in report for reason in o.reasons)
    # Nothing lands outside the configured prefixes, whatever the key holds.
    prefixes = tuple(
        getattr(settings.s3, f)
        for f in (
            "incoming_prefix",
            "accepted_prefix",
            "quarantine_prefix",
            "reports_prefix",
            "runs_prefix",
            "state_prefix",
        )
    )
    for obj in store.iter_objects(""):
        assert obj.key == case.object_key or (
            obj.key.startswith(prefixes[1:]) and ".." not in obj.key.split("/")
        ), obj.key

    # The case's own expectations.
    if case.reasons is not None:
        assert set(o.reasons) == case.reasons, o.reasons
    else:
        assert o.quarantined >= 1, "the hostile record was accepted"
    if case.accepted is not None:
        assert o.accepted == case.accepted
    for reason, fragment in case.fields.items():
        assert any(fragment in q["field"] for q in quarantined if q["reason"] == reason), (reason, fragment)
    for fragment in case.detail:
        assert any(fragment in q["detail"] for q in quarantined), fragment
    if case.check is not None:
        case.check(o, quarantined, accepted)

"""Annotator-controlled text must not become active content in the reports intake publishes.

A sentence that fails a Great Expectations check is shown in the GX Data Docs (HTML uploaded under
``reports/``) as an "unexpected value". The Retraining UI serves those pages through its S3 proxy
with ``Content-Security-Policy: script-src 'none'`` (tests/plugins/test_ui.py::
test_s3_proxy_serves_reports_with_a_no_script_policy), but the objects are also opened directly
(MinIO console, a static website bucket, a downloaded copy), where only escaping helps.
"""

from __future__ import annotations

import json

import pytest

PAYLOAD = "<script>alert(document.cookie)</script><img src=x onerror=alert(2)>"


@pytest.fixture
def intake_with_markup(store, settings):
    from retrain.devtools.synth import make_batch
    from retrain.ingest import find_new_batches, process_batches

    long_text = PAYLOAD + "的" * 1000  # too long: GX lists it as an unexpected value
    lines = make_batch(5, seed=11) + [json.dumps({"text": long_text, "label": {"name": {"<script>": [[0, 7]]}}},
                                                 ensure_ascii=False)]
    store.put_bytes("incoming/markup.json", ("\n".join(lines) + "\n").encode())
    result = process_batches(store, settings, find_new_batches(store, settings).objects, "manual__markup")
    (outcome,) = result.objects
    assert outcome.reasons == {"gx:expect_column_value_lengths_to_be_between": 1}
    pages = {o.key: store.get_bytes(o.key).decode("utf-8", "replace")
             for o in store.iter_objects(settings.s3.reports_prefix) if o.key.endswith(".html")}
    assert pages
    return result, pages


def test_intake_report_and_quarantine_keep_markup_as_inert_data(intake_with_markup, store):
    result, _ = intake_with_markup
    rows = [json.loads(line) for line in store.get_bytes(result.objects[0].quarantine_uri.split("/", 3)[3]).splitlines()]
    assert any(PAYLOAD in row["raw"] or PAYLOAD in row["detail"] for row in rows)  # kept for the annotator, as JSON
    report = store.get_bytes(result.report_uri.split("/", 3)[3]).decode()
    assert "<script>" not in report  # the Markdown report lists keys and counts, not record text


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "GAP (src/retrain/validate.py, GX Data Docs built by _build_docs): a sentence shown as a GX "
    "unexpected value is written into the Data Docs HTML unescaped, so annotator markup "
    "(<script>, onerror=) is live in reports/…/*.html when opened outside the UI's no-script proxy"))
def test_data_docs_escape_annotator_text(intake_with_markup):
    _, pages = intake_with_markup
    live = [key for key, html in pages.items() if "<script>alert(document.cookie)" in html or "onerror=alert" in html]
    assert not live, live

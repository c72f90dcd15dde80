"""Annotator-controlled text must not become active content in the reports intake publishes.

A sentence that fails a Great Expectations check is shown in the GX Data Docs (HTML uploaded under
``reports/``) as an "unexpected value". The Retraining UI serves those pages through its S3 proxy
with ``Content-Security-Policy: script-src 'none'`` (tests/plugins/test_ui.py::
test_s3_proxy_serves_reports_with_a_no_script_policy), but the objects are also opened directly
(MinIO console, a static website bucket, a downloaded copy), where only escaping helps.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

PAYLOAD = "<script>alert(document.cookie)</script><img src=x onerror=alert(2)>"


@pytest.fixture
def intake_with_markup(store, settings):
    from retrain.ingest import find_new_batches, process_batches
    from tests.support.synth import make_batch

    long_text = PAYLOAD + "的" * 1000  # too long: GX lists it as an unexpected value
    lines = make_batch(5, seed=11) + [
        json.dumps({"text": long_text, "label": {"name": {"<script>": [[0, 7]]}}}, ensure_ascii=False)
    ]
    store.put_bytes("incoming/markup.json", ("\n".join(lines) + "\n").encode())
    result = process_batches(store, settings, find_new_batches(store, settings).objects, "manual__markup")
    (outcome,) = result.objects
    assert outcome.reasons == {"gx:expect_column_value_lengths_to_be_between": 1}
    pages = {
        o.key: store.get_bytes(o.key).decode("utf-8", "replace")
        for o in store.iter_objects(settings.s3.reports_prefix)
        if o.key.endswith(".html")
    }
    assert pages
    return result, pages


def test_intake_report_and_quarantine_keep_markup_as_inert_data(intake_with_markup, store):
    result, _ = intake_with_markup
    rows = [
        json.loads(line)
        for line in store.get_bytes(result.objects[0].quarantine_uri.split("/", 3)[3]).splitlines()
    ]
    assert any(
        PAYLOAD in row["raw"] or PAYLOAD in row["detail"] for row in rows
    )  # kept for the annotator, as JSON
    report = store.get_bytes(result.report_uri.split("/", 3)[3]).decode()
    assert "<script>" not in report  # the Markdown report lists keys and counts, not record text


class _LiveMarkup(HTMLParser):
    """What a browser would run from a page (``<script>`` bodies, ``on*`` handler attributes) and the
    text it would show (character references decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.handlers: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [f"<{tag} {name}={value}>" for name, value in attrs if name.startswith("on")]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        (self.scripts if self._in_script else self.text).append(data)


def test_data_docs_escape_annotator_text(intake_with_markup):
    """The sentence GX lists as an unexpected value is in the Data Docs as text, escaped: no live
    <script> or onerror= from it, and a reader still sees exactly what the annotator wrote."""
    _, pages = intake_with_markup
    shown = False
    for key, page in pages.items():
        parsed = _LiveMarkup()
        parsed.feed(page)
        parsed.close()
        assert not [s for s in parsed.scripts if "alert(document.cookie)" in s], key
        assert not [h for h in parsed.handlers if "alert(" in h], key
        shown = shown or PAYLOAD in "".join(parsed.text)
    assert shown, "the rejected sentence is not shown (as text) in any Data Docs page"

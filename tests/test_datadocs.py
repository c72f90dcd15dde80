"""retrain.datadocs: GX Data Docs rewritten to need nothing from elsewhere (real GX pages, built by
validate_batch, and the rewriting rules on small pages)."""

from __future__ import annotations

import hashlib
import re

from retrain import datadocs
from retrain.datadocs import ValidationEntry, make_self_contained, render_index, rewrite_page
from retrain.validate import validate_batch
from tests.validate.test_validate_batch import clean, rec

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//|url\(\s*["']?(?:https?:)?//""", re.I)


def test_real_data_docs_are_self_contained(settings, tmp_path):
    docs = tmp_path / "docs"
    bv = validate_batch(
        clean(12) + [rec(ents=[(0, 4, "公司")], line=101)], settings, batch_name="b1", docs_dir=docs
    )
    assert bv.docs_index == docs / "index.html"
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) == 7  # index, 3 expectation suites, 3 validation results
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text.lower(), page
        # nothing is loaded from elsewhere (plain <a href> links to GX's site are navigation, not loads)
        loads = [m.group(0) for m in EXTERNAL.finditer(text) if not _in_anchor(text, m.start())]
        assert not loads, (page, loads[:3])
        depth = len(page.relative_to(docs).parts) - 1
        for css in datadocs.STYLESHEETS:
            assert f'href="{"../" * depth}{css}"' in text, (page, css)
            assert (docs / css).is_file()
    index = bv.docs_index.read_text(encoding="utf-8")
    rows = re.findall(r'<tr><td><a href="([^"]+)">(\w+)</a></td><td>.*?(succeeded|failed)', index)
    assert sorted((suite, status) for _, suite, status in rows) == [
        ("ner_batch", "succeeded"),
        ("ner_sentences", "succeeded"),
        ("ner_spans", "failed"),  # the unknown label
    ]
    assert all((docs / href).is_file() for href, _, _ in rows)
    # the vendored files are the ones VENDORED.txt records, with their licences
    vendored = (docs / datadocs.VENDOR / "VENDORED.txt").read_text(encoding="utf-8")
    assert "bootstrap@4.3.1" in vendored and "@fortawesome/fontawesome-free@6.6.0" in vendored
    for digest, name in re.findall(r"^([0-9a-f]{64})  \./(\S+)$", vendored, re.M):
        assert hashlib.sha256((docs / datadocs.VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert (docs / datadocs.VENDOR / "bootstrap/LICENSE").is_file()
    assert (docs / datadocs.VENDOR / "fontawesome/LICENSE.txt").is_file()


def _in_anchor(text: str, pos: int) -> bool:
    """``pos`` is inside an ``<a …>`` or ``<form …>`` start tag (a link, not something loaded)."""
    start = text.rfind("<", 0, pos)
    return bool(re.match(r"<(a|form)\b", text[start:], re.I))


def test_rewrite_page_drops_scripts_and_cdn_styles_and_keeps_local_links():
    page = (
        '<html><head><link rel="stylesheet" href="https://cdn.example/b.css"/>'
        '<link rel="shortcut icon" href="../static/images/favicon.ico"/>'
        '<script src="//cdn.example/x.js"></script><style>.x{background:url("https://h/logo.png")}'
        ".y{background:url(https://h/pic.png)}</style></head>"
        '<body><script>alert(1)</script><img src="https://h/logo-long.png"/><a href="https://gx.io">gx</a>'
        "</body></html>"
    )
    out = rewrite_page(page, "../")
    assert "<script" not in out and "cdn.example" not in out
    assert 'href="../static/images/favicon.ico"' in out and '<a href="https://gx.io">' in out
    assert 'src="../static/images/logo-long.png"' in out and "url('../static/images/logo-long.png')" in out
    assert "url('data:,')" in out
    assert out.index('href="../static/vendor/bootstrap/css/bootstrap.min.css"') < out.index("</head>")


def test_index_escapes_names_and_says_when_there_is_nothing():
    entry = ValidationEntry("<s>", False, 3, 2, 1, "t", "validations/a&b.html")
    out = render_index([entry], [])
    assert "&lt;s&gt;" in out and 'href="validations/a&amp;b.html"' in out and "<script" not in out
    assert "No validation results." in render_index([], []) and "<li>none</li>" in render_index([], [])


def test_make_self_contained_on_an_empty_site(tmp_path):
    index = make_self_contained(tmp_path, [])
    assert "No validation results." in index.read_text(encoding="utf-8")
    assert (tmp_path / datadocs.STYLESHEETS[0]).is_file()

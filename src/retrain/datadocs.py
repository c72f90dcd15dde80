"""Self-contained GX Data Docs: readable with no network and under a policy that runs no script.

Great Expectations 1.x builds pages that load about a dozen scripts, styles and fonts from public
CDNs, and its index page fills its table of validations with JavaScript (bootstrap-table). Opened
offline, or through the Airflow UI's report proxy (``script-src 'none'``,
plugins/retrain_airflow/ui/proxy.py), the index lists nothing and the pages are unstyled.
`make_self_contained` rewrites a built Data Docs folder so that it needs nothing from elsewhere:

- every page loses its ``<script>`` elements (none could run behind the proxy; the result pages are
  rendered on the server and only used scripts to fold sections) and its links to CDN styles;
  it links instead the styles vendored in ``datadocs_assets/`` (bootstrap 4.3.1 and Font Awesome
  6.6.0 solid icons from the npm registry, pinned, with their licences: see
  scripts/vendor_datadocs_assets.sh and VENDORED.txt), copied to ``static/vendor/`` of the folder;
- images and CSS ``url()`` from other hosts point at GX's own logo in ``static/images/`` (or nothing);
- ``index.html`` is replaced by a page rendered here, without script: a table of the validations
  (suite, status, expectations evaluated/succeeded/failed, run time, a link to the result page) and
  the expectation suites' pages.
"""

from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "datadocs_assets"
VENDOR = "static/vendor"
#: The vendored stylesheets every page links, relative to the Data Docs root.
STYLESHEETS = (
    f"{VENDOR}/bootstrap/css/bootstrap.min.css",
    f"{VENDOR}/fontawesome/css/fontawesome.min.css",
    f"{VENDOR}/fontawesome/css/solid.min.css",
)
INDEX_TITLE = "Data Docs created by Great Expectations"
_LOGO = "static/images/logo-long.png"
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.S | re.I)
_LINK = re.compile(r"<link\b[^>]*>", re.I)
_EXTERNAL = re.compile(r"""^\s*(?:https?:)?//""", re.I)
_HREF = re.compile(r"""\bhref\s*=\s*["']([^"']*)["']""", re.I)
_IMG = re.compile(r"""(<img\b[^>]*?\bsrc\s*=\s*)(["'])((?:https?:)?//[^"']*)\2""", re.I)
_CSS_URL = re.compile(r"""url\(\s*(["']?)((?:https?:)?//[^)"']*)\1\s*\)""", re.I)


@dataclass(frozen=True)
class ValidationEntry:
    """One validation result as the index lists it; ``page`` is relative to the Data Docs root."""

    suite: str
    success: bool
    evaluated: int
    successful: int
    unsuccessful: int
    run_time: str
    page: str


def make_self_contained(docs_dir: Path, validations: list[ValidationEntry]) -> Path:
    """Rewrite the Data Docs in ``docs_dir`` as described in the module docstring; the new index."""
    shutil.copytree(ASSETS, docs_dir / VENDOR, dirs_exist_ok=True)
    for page in sorted(docs_dir.rglob("*.html")):
        if page != docs_dir / "index.html":
            depth = len(page.relative_to(docs_dir).parts) - 1
            page.write_text(rewrite_page(page.read_text(encoding="utf-8"), "../" * depth), encoding="utf-8")
    suites = sorted(p.relative_to(docs_dir).as_posix() for p in (docs_dir / "expectations").rglob("*.html"))
    index = docs_dir / "index.html"
    index.write_text(render_index(validations, suites), encoding="utf-8")
    return index


def rewrite_page(text: str, root: str) -> str:
    """A GX page without scripts or styles from elsewhere; ``root`` is the relative path to the Data
    Docs root ("" or "../../")."""
    text = _SCRIPT.sub("", text)

    def link(m: re.Match[str]) -> str:
        href = _HREF.search(m.group(0))
        return "" if href and _EXTERNAL.match(href.group(1)) else m.group(0)

    text = _LINK.sub(link, text)
    text = _IMG.sub(lambda m: f"{m.group(1)}{m.group(2)}{root}{_LOGO}{m.group(2)}", text)
    text = _CSS_URL.sub(
        lambda m: f"url('{root}{_LOGO}')" if "logo" in m.group(2).lower() else "url('data:,')", text
    )
    links = "".join(f'<link rel="stylesheet" href="{root}{css}"/>' for css in STYLESHEETS)
    head = re.search(r"<head\b[^>]*>", text, re.I)
    if head is None:
        return links + text
    return text[: head.end()] + links + text[head.end() :]


def render_index(validations: list[ValidationEntry], suites: list[str]) -> str:
    """The index page: the validations and the expectation suites, as plain HTML (no script)."""
    esc = html.escape
    rows = []
    for v in sorted(validations, key=lambda v: (v.run_time, v.suite)):
        status = (
            '<span class="text-success"><i class="fas fa-check-circle"></i> succeeded</span>'
            if v.success
            else '<span class="text-danger"><i class="fas fa-times"></i> failed</span>'
        )
        rows.append(
            f'<tr><td><a href="{esc(v.page)}">{esc(v.suite)}</a></td><td>{status}</td>'
            f"<td>{v.evaluated}</td><td>{v.successful}</td><td>{v.unsuccessful}</td>"
            f"<td>{esc(v.run_time)}</td></tr>"
        )
    suite_items = (
        "".join(f'<li><a href="{esc(p)}">{esc(Path(p).stem)}</a></li>' for p in suites) or "<li>none</li>"
    )
    table = (
        '<table class="table table-sm table-striped" id="validations"><thead><tr><th>suite</th>'
        "<th>status</th><th>expectations</th><th>succeeded</th><th>failed</th><th>run time</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else "<p>No validation results.</p>"
    )
    links = "".join(f'<link rel="stylesheet" href="{css}"/>' for css in STYLESHEETS)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{INDEX_TITLE}</title>"
        '<link rel="shortcut icon" href="static/images/favicon.ico" type="image/x-icon"/>'
        f'{links}</head><body class="container py-3">'
        f'<img src="{_LOGO}" alt="Great Expectations" style="height:2.5rem"/>'
        '<h1 class="h3 mt-3">Validation results</h1>'
        f'{table}<h2 class="h5 mt-4">Expectation suites</h2><ul id="suites">{suite_items}</ul>'
        "</body></html>\n"
    )

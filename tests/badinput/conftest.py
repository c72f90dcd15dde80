"""Collects one row per bad-input case and, at the end of the session, writes the table to
``$RETRAIN_TEST_ARTIFACTS/badinput_table.md`` (default tests/artifacts/, git-ignored) and prints it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = pytest.StashKey[list]()


@pytest.fixture
def badinput_table(request) -> list[dict[str, Any]]:
    """The session's table rows; a test appends its case's row (before its assertions)."""
    return request.config.stash.setdefault(ROWS, [])


def _cell(value: Any) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Bad-input corpus through intake (`retrain.ingest.process_batches` on moto S3)",
        "",
        "| case | format | input | bytes | read | accepted | quarantined | reason codes | outcome |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["n"]):
        reasons = ", ".join(f"{k} ×{v}" for k, v in sorted(r.get("reasons", {}).items())) or "—"
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    f"`{r['case']}`",
                    r["format"],
                    r["what"],
                    r["bytes"],
                    r.get("read", "—"),
                    r.get("accepted", "—"),
                    r.get("quarantined", "—"),
                    reasons,
                    r.get("outcome", "—"),
                )
            )
            + " |"
        )
    bugs = sorted({r["bug"] for r in rows if r.get("bug")})
    if bugs:
        lines += ["", "Known product bugs (those cases are `xfail(strict=True)`):", ""] + [
            f"- {b}" for b in bugs
        ]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    rows = config.stash.get(ROWS, None)
    if not rows:
        return
    text = render_table(rows)
    out_dir = Path(os.environ.get("RETRAIN_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "badinput_table.md"
    out.write_text(text, encoding="utf-8")
    terminalreporter.section("bad-input corpus")
    terminalreporter.write(text)
    terminalreporter.write_line(f"(written to {out})")

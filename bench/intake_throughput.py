"""Intake throughput on the real CLUENER train file: parse, validate (Great Expectations), render.

    .venv-af/bin/python bench/intake_throughput.py [--file ../shared/data/cluener/train.json]
        [--repeat 3] [--docs]

Stages, each timed in this run (best of --repeat for the cheap ones, wall clock, tracemalloc off):
  json.loads   the baseline: split the file into lines and json.loads each one, nothing else
  parse        retrain.formats.parse_stream over iter_bounded_lines (64 KiB chunks) -> Records
  validate     retrain.validate.validate_batch (GX import excluded and shown on its own line)
  render       retrain.prompt.alpaca_example for every accepted record
Peak memory: tracemalloc peak of each stage in a separate pass (tracemalloc slows Python down,
so it is never on while timing), and the process's max RSS at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT.parent / "shared" / "data" / "cluener" / "train.json"


def best_of(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_of(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--docs", action="store_true", help="also build GX Data Docs (into a temp dir)")
    args = ap.parse_args(argv)
    if not args.file.exists():
        print(f"{args.file}: not found (CLUENER lives in ../shared/data/cluener/)", file=sys.stderr)
        return 2

    from retrain.config import load_settings
    from retrain.formats import iter_bounded_lines, parse_stream
    from retrain.prompt import alpaca_example
    from retrain.records import Record

    settings = load_settings(environ={})
    instruction = settings.prompt.render_instruction()
    path: Path = args.file

    def baseline() -> int:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip() and json.loads(line) is not None)

    def parse() -> list[Any]:
        with open(path, "rb") as f:
            chunks = iter(lambda: f.read(64 * 1024), b"")
            lines = iter_bounded_lines(chunks, settings.intake.max_line_bytes)
            return list(parse_stream(lines, f"bench/{path.name}", "", settings))

    t_json, n_json = best_of(args.repeat, baseline)
    t_parse, items = best_of(args.repeat, parse)
    records = [i for i in items if isinstance(i, Record)]
    n = len(items)
    assert n == n_json, f"{n} outcomes for {n_json} lines"

    t0 = time.perf_counter()
    import great_expectations  # noqa: F401

    t_import = time.perf_counter() - t0
    from retrain.validate import validate_batch

    docs = Path(tempfile.mkdtemp(prefix="intake-bench-docs-")) if args.docs else None

    def validate() -> Any:
        return validate_batch(records, settings, batch_name="bench", docs_dir=docs)

    validate()  # warm-up: first-use costs inside GX (expectation registry, jinja) are not per batch
    t_validate, bv = best_of(max(1, args.repeat - 1), validate)

    def render() -> list[dict[str, Any]]:
        return [alpaca_example(instruction, r.text, r.entities) for r in bv.accepted]

    t_render, examples = best_of(args.repeat, render)

    peaks = {
        "json.loads": peak_of(baseline),
        "parse": peak_of(parse),
        "validate": peak_of(validate),
        "render": peak_of(render),
    }
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rows = [
        ("json.loads (baseline)", t_json, n_json, peaks["json.loads"]),
        ("parse", t_parse, n, peaks["parse"]),
        ("validate (GX)" + (" + Data Docs" if docs else ""), t_validate, len(records), peaks["validate"]),
        ("render alpaca", t_render, len(examples), peaks["render"]),
    ]
    total = t_parse + t_validate + t_render
    size_mb = path.stat().st_size / 1e6
    print(
        f"file: {path} ({size_mb:.2f} MB, {n} lines, {sum(len(r.entities) for r in records)} spans); "
        f"accepted {len(bv.accepted)}, rejected {len(bv.rejected)}, quarantined {bv.batch_quarantined}"
    )
    print(f"{'stage':<28}{'seconds':>9}{'records/s':>12}{'x json.loads':>14}{'peak MiB':>10}")
    for name, secs, count, peak in rows:
        print(f"{name:<28}{secs:>9.3f}{count / secs:>12,.0f}{secs / t_json:>14.1f}{peak / 2**20:>10.1f}")
    print(f"{'parse+validate+render':<28}{total:>9.3f}{n / total:>12,.0f}{total / t_json:>14.1f}{'':>10}")
    print(f"great_expectations import: {t_import:.2f} s (once per process); max RSS {rss_mb:.0f} MiB")
    if docs:
        print(f"data docs: {bv.docs_index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark that can run on this machine and print ONE table (`make bench`).

    .venv-af/bin/python bench/run_all.py [--only dag_parse,no_new_data] [--small-night] [--json]

Each bench runs as its own subprocess with the python of the environment it needs (.venv-af for the
Airflow side, .venv-tr for the trainer side), one after the other (this machine has 2 shared cores:
never two benches at once). The scripts of this folder print their headline numbers as one JSON line
(``--json``); intake_throughput.py and eval_batched.py have no such flag, so their printed report is
read instead (the lines named below). Every number in the table is measured by this run; the
full output of each bench is kept in .work/bench/run_all/<bench>.log.

Columns: value, and the baseline it is compared with IN THE SAME RUN of that bench; ratio =
value / baseline unless the metric says otherwise ("%" = share of the baseline).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import AF_PY, BENCH_WORK, REPO, TR_PY, load_average, row  # noqa: E402

BENCH = REPO / "bench"
LOG_DIR = BENCH_WORK / "run_all"
DEMO_LOGS = REPO / ".work" / "demo" / "logs"


@dataclass
class Result:
    name: str
    status: str = "ok"  # ok | failed | skipped
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    load: str = ""


def _json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and '"bench"' in line:
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def parse_intake(stdout: str) -> list[dict[str, Any]]:
    """intake_throughput.py's report: the `json.loads (baseline)`, `validate (GX)` and
    `parse+validate+render` lines (seconds, records/s, x json.loads)."""

    def stage(name: str) -> tuple[float, float] | None:
        m = re.search(rf"^{re.escape(name)}\s+([\d.]+)\s+([\d,]+)", stdout, re.M)
        return (float(m.group(1)), float(m.group(2).replace(",", ""))) if m else None

    base, validate, total = (
        stage("json.loads (baseline)"),
        stage("validate (GX)"),
        stage("parse+validate+render"),
    )
    if not (base and total):
        raise ValueError("intake_throughput.py printed no json.loads / parse+validate+render line")
    rows = [
        row(
            "CLUENER train parse+validate+render (baseline: json.loads)",
            total[0],
            "s",
            base[0],
            note=f"{total[1]:,.0f} records/s",
        )
    ]
    if validate:
        rows.append(
            row(
                "  of which GX validate (baseline: json.loads)",
                validate[0],
                "s",
                base[0],
                note=f"{validate[1]:,.0f} records/s",
            )
        )
    return rows


def parse_eval(stdout: str) -> list[dict[str, Any]]:
    """eval_batched.py's report: `one at a time`, `batched (bs N)` and `prefix-cached (bs N)` lines
    (seconds, tokens/s)."""
    single = re.search(r"^one at a time\s*:\s*([\d.]+) s\s+([\d.]+) tokens/s", stdout, re.M)
    batched = re.search(r"^batched \(bs\s*(\d+)\)\s*:\s*([\d.]+) s\s+([\d.]+) tokens/s", stdout, re.M)
    cached = re.search(r"^prefix-cached \(bs\s*(\d+)\)\s*:\s*([\d.]+) s\s+([\d.]+) tokens/s", stdout, re.M)
    if not (single and batched and cached):
        raise ValueError("eval_batched.py printed no `one at a time` / `batched` / `prefix-cached` line")
    return [
        row(
            f"tiny-model greedy generation, batch {batched.group(1)} (baseline: one at a time)",
            float(batched.group(3)),
            "tok/s",
            float(single.group(2)),
        ),
        row(
            f"  + prefix KV cache, batch {cached.group(1)} (baseline: batched)",
            float(cached.group(3)),
            "tok/s",
            float(batched.group(3)),
        ),
    ]


def run_bench(
    name: str, cmd: list[str], parse: Callable[[str], list[dict[str, Any]]] | None, timeout: float
) -> Result:
    """Run one bench; rows from its --json line (``parse`` None) or from its text report."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{name}.log"
    res = Result(name, load=load_average())
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(str(c) for c in cmd)}  (load {res.load})",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=str(REPO), text=True, capture_output=True, timeout=timeout
        )
        out, code = proc.stdout, proc.returncode
        log.write_text(
            f"$ {' '.join(str(c) for c in cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            encoding="utf-8",
        )
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout or ""
        out, code = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw, -1
        res.note = f"timed out after {timeout:.0f} s"
        log.write_text(f"$ {' '.join(str(c) for c in cmd)}\n{out}\n--- {res.note} ---\n", encoding="utf-8")
    res.seconds = time.perf_counter() - t0
    try:
        if parse is None:
            data = _json_line(out)
            if data is None:
                raise ValueError("no JSON result line")
            res.rows = data["rows"]
        else:
            res.rows = parse(out)
        if code != 0:
            res.status, res.note = "failed", res.note or f"exit {code}"
    except (ValueError, KeyError) as exc:
        res.status, res.note = "failed", res.note or f"exit {code}: {exc}"
    print(
        f"    {res.status} in {res.seconds:.0f} s{': ' + res.note if res.note else ''}; log {log}", flush=True
    )
    return res


def cuda_available() -> bool:
    if not TR_PY.exists():
        return False
    proc = subprocess.run(
        [str(TR_PY), "-c", "import torch; print(torch.cuda.is_available())"],
        text=True,
        capture_output=True,
        timeout=120,
    )
    return proc.stdout.strip() == "True"


def fmt_value(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit in ("tok/s",):
        return f"{value:,.1f} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    if isinstance(value, float):
        return f"{value:.4g}{(' ' + unit) if unit else ''}"
    return f"{value}{(' ' + unit) if unit else ''}"


def fmt_ratio(r: dict[str, Any]) -> str:
    ratio = r.get("ratio")
    if ratio is None:
        return "—"
    return f"{ratio:.1%}" if r.get("ratio_unit") == "%" else f"{ratio:.3g}x"


def print_table(results: list[Result]) -> None:
    lines = [("bench", "metric", "value", "baseline", "ratio")]
    for res in results:
        if res.status == "skipped" or not res.rows:
            lines.append((res.name, res.note or res.status, "—", "—", "—"))
            continue
        for r in res.rows:
            unit = r.get("unit", "")
            metric = r["metric"] + (f" [{r['note']}]" if r.get("note") else "")
            lines.append(
                (
                    res.name if r is res.rows[0] else "",
                    metric,
                    fmt_value(r.get("value"), unit),
                    fmt_value(r.get("baseline"), unit) if r.get("baseline") is not None else "—",
                    fmt_ratio(r),
                )
            )
        if res.status == "failed":
            lines.append(("", f"FAILED: {res.note}", "", "", ""))
    widths = [min(max(len(line[i]) for line in lines), 110 if i == 1 else 40) for i in range(5)]
    sep = "  "
    for i, line in enumerate(lines):
        cells = [
            line[0].ljust(widths[0]),
            line[1].ljust(widths[1]),
            line[2].rjust(widths[2]),
            line[3].rjust(widths[3]),
            line[4].rjust(widths[4]),
        ]
        print(sep.join(cells).rstrip())
        if i == 0:
            print(sep.join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated bench names")
    ap.add_argument(
        "--small-night",
        action="store_true",
        help="e2e_stages runs a small night even when .work/demo/logs exists",
    )
    ap.add_argument("--json", action="store_true", help="also print all results as one JSON line")
    args = ap.parse_args(argv)

    use_logs = DEMO_LOGS.is_dir() and any(DEMO_LOGS.glob("*.log")) and not args.small_night
    e2e_cmd = [AF_PY, BENCH / "e2e_stages.py", "--json"] + (["--from-logs", DEMO_LOGS] if use_logs else [])
    plan: list[tuple[str, list[Any], Callable[[str], list[dict[str, Any]]] | None, float]] = [
        ("dag_parse", [AF_PY, BENCH / "dag_parse.py", "--json"], None, 600),
        ("no_new_data", [AF_PY, BENCH / "no_new_data.py", "--json"], None, 600),
        ("intake_throughput", [AF_PY, BENCH / "intake_throughput.py"], parse_intake, 600),
        ("intake_memory", [AF_PY, BENCH / "intake_memory.py", "--json"], None, 900),
        ("eval_batched", [TR_PY, BENCH / "eval_batched.py"], parse_eval, 900),
        ("warm_start", [TR_PY, BENCH / "warm_start.py", "--json"], None, 3600),
        ("e2e_stages" + (" (demo logs)" if use_logs else " (small night)"), e2e_cmd, None, 900),
    ]
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    load_start = load_average()
    started = time.perf_counter()
    results: list[Result] = []
    for name, cmd, parse, timeout in plan:
        if only and name.split(" ")[0] not in only:
            continue
        results.append(run_bench(name, cmd, parse, timeout))
    if not only or "gpu_lora_throughput" in only:
        if cuda_available():
            results.append(
                run_bench(
                    "gpu_lora_throughput", [TR_PY, BENCH / "gpu_lora_throughput.py", "--json"], None, 3600
                )
            )
        else:
            results.append(
                Result(
                    "gpu_lora_throughput",
                    "skipped",
                    note="needs CUDA: skipped here (see bench/README.md for the GPU command)",
                )
            )

    print(
        f"\nbenchmarks of {REPO.name} — {time.strftime('%Y-%m-%d %H:%M')}, "
        f"load average at start {load_start}, "
        f"at end {load_average()}; {time.perf_counter() - started:.0f} s in all"
    )
    print_table(results)
    for res in results:
        if res.load:
            print(f"  {res.name}: {res.status}, {res.seconds:.0f} s, load average when it started {res.load}")
    if args.json:
        print(json.dumps([res.__dict__ for res in results], default=str))
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

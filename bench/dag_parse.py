"""DAG parse time of each file in dags/ against the same file with heavy imports at the top.

    .venv-af/bin/python bench/dag_parse.py [--n 3] [--json]

For every DAG file, a copy is written to a temporary folder with ``import great_expectations, mlflow,
pandas`` added at the top (right after ``from __future__``): the anti-pattern STYLE.md describes (4.5 s
instead of 0.04 s per parse). Each variant is parsed in a FRESH interpreter, N times, light and heavy
interleaved so that load changes hit both alike; the median is reported.

In each child, Airflow itself is imported first (untimed for the parse, reported on its own line): the
DAG processor's parent already holds Airflow when it parses a file. Then the file goes through
Airflow's own ``DagBag`` and the parse time is DagBag's per-file duration (its FileLoadStat: what
the DAG processor reports as the file's last_duration). What the DAG file imports (retrain_airflow,
retrain.config, pydantic, yaml; and in the heavy copy GX, MLflow, pandas) is part of that time, as it
is in every parse of the file by the DAG processor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_json, load_average, median, row  # noqa: E402

HEAVY_IMPORTS = "import great_expectations, mlflow, pandas  # noqa: F401,E401  (bench: the anti-pattern)\n"

# Runs in the child interpreter: import Airflow, then time one DagBag parse of argv[1].
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import airflow, airflow.sdk  # noqa: F401
from airflow.dag_processing.dagbag import DagBag
t_airflow = time.perf_counter() - t0
t0 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1], safe_mode=False)
t_bag = time.perf_counter() - t0
stat = bag.dagbag_stats[0] if bag.dagbag_stats else None
print("@@RESULT@@" + json.dumps({
    "airflow_import_s": t_airflow, "dagbag_s": t_bag,
    "file_parse_s": stat.duration.total_seconds() if stat else None,
    "dags": sorted(bag.dag_ids), "import_errors": {k: v[-500:] for k, v in bag.import_errors.items()},
    "heavy_loaded": sorted(
        m for m in ("great_expectations", "mlflow", "pandas", "torch") if m in sys.modules
    ),
}))
"""


def heavy_copy(src: Path, dest_dir: Path) -> Path:
    """``src`` with HEAVY_IMPORTS inserted after the docstring/__future__ import (they must stay first)."""
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("from __future__ import")), None)
    if at is None:  # no __future__ import: after the module docstring, if any
        import ast

        tree = ast.parse("".join(lines))
        first = tree.body[0] if tree.body else None
        is_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
        at = first.end_lineno if is_doc and first.end_lineno else 0
    dest = dest_dir / src.name
    dest.write_text("".join(lines[:at]) + HEAVY_IMPORTS + "".join(lines[at:]), encoding="utf-8")
    return dest


def child_env(home: Path, dags_folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN__"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO / "plugins"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def parse_once(python: str, dag_file: Path, env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [python, "-c", CHILD, str(dag_file)],
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
        cwd=str(dag_file.parent),
    )
    wall = time.perf_counter() - t0
    marker = [line for line in proc.stdout.splitlines() if line.startswith("@@RESULT@@")]
    if proc.returncode != 0 or not marker:
        raise RuntimeError(f"parsing {dag_file} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(marker[-1][len("@@RESULT@@") :])
    if out["import_errors"] or not out["dags"]:
        raise RuntimeError(f"{dag_file}: DagBag found no DAG / import errors: {out['import_errors']}")
    out["process_wall_s"] = wall
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3, help="parses per variant and file (median)")
    ap.add_argument("--dags", type=Path, default=REPO / "dags", help="folder of DAG files")
    ap.add_argument("--python", default=sys.executable, help="the Airflow environment's python")
    ap.add_argument("--json", action="store_true", help="also print the headline numbers as one JSON line")
    args = ap.parse_args(argv)

    files = sorted(p for p in args.dags.glob("*.py") if not p.name.startswith("_"))
    if not files:
        print(f"no DAG files in {args.dags}", file=sys.stderr)
        return 2
    load_before = load_average()
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dag-parse-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "heavy").mkdir()
        (tmpdir / "home").mkdir()
        for f in files:
            light, heavy = f, heavy_copy(f, tmpdir / "heavy")
            env_light, env_heavy = (
                child_env(tmpdir / "home", f.parent),
                child_env(tmpdir / "home", heavy.parent),
            )
            res = results.setdefault(f.name, {"light": [], "heavy": []})
            for _ in range(args.n):  # interleaved: light, heavy, light, heavy, ...
                res["light"].append(parse_once(args.python, light, env_light))
                res["heavy"].append(parse_once(args.python, heavy, env_heavy))
            missing = {"great_expectations", "mlflow", "pandas"} - set(res["heavy"][0]["heavy_loaded"])
            if missing:
                raise RuntimeError(f"the heavy copy of {f.name} did not load {missing}")

    print(f"DAG parse time: median of {args.n} fresh interpreters per variant; load average {load_before}")
    print(
        f"{'file':<22}{'dags':<26}{'light s':>9}{'heavy s':>9}{'heavy/light':>13}"
        f"{'light proc s':>14}{'heavy proc s':>14}"
    )
    rows, details = [], {}
    for name, res in results.items():
        light_s = median(r["file_parse_s"] for r in res["light"])
        heavy_s = median(r["file_parse_s"] for r in res["heavy"])
        light_p = median(r["process_wall_s"] for r in res["light"])
        heavy_p = median(r["process_wall_s"] for r in res["heavy"])
        print(
            f"{name:<22}{','.join(res['light'][0]['dags']):<26}{light_s:>9.3f}{heavy_s:>9.3f}"
            f"{heavy_s / light_s:>12.1f}x{light_p:>14.2f}{heavy_p:>14.2f}"
        )
        rows.append(
            row(
                f"{name} parse (baseline: + heavy imports)",
                light_s,
                "s",
                heavy_s,
                ratio=heavy_s / light_s,
                note="ratio = heavy/light",
            )
        )
        details[name] = {
            "light_s": [r["file_parse_s"] for r in res["light"]],
            "heavy_s": [r["file_parse_s"] for r in res["heavy"]],
            "dags": res["light"][0]["dags"],
        }
    airflow_import = median(r["airflow_import_s"] for res in results.values() for r in res["light"])
    print(f"airflow import in each child (not in the parse times): median {airflow_import:.2f} s")
    print(f"heavy copy = the same file with `{HEAVY_IMPORTS.split('#')[0].strip()}` at the top")
    print(f"load average after: {load_average()}")
    if args.json:
        details.update(
            airflow_import_s=airflow_import, n=args.n, load_before=load_before, load_after=load_average()
        )
        emit_json("dag_parse", rows, details)
    return 0


if __name__ == "__main__":
    sys.exit(main())

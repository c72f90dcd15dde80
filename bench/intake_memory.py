"""Intake peak memory against object size: `retrain.ingest.process_batches` on CLUENER train copies.

    .venv-af/bin/python bench/intake_memory.py [--file ../shared/data/cluener/train.json]
        [--copies 1,3,6] [--compare-src /work/main/src] [--json]

Set-up, not measured: a moto S3 server on 127.0.0.1; for each size, one object under incoming/ made
of N copies of the CLUENER train file (streamed from that path into S3 by this process; nothing is
copied into the repository).

Measured, each size in a **fresh subprocess** (so one size's memory never counts against another):
the child imports everything intake uses (retrain, pandas, Great Expectations), reads its resident
set size (RSS, /proc/self/statm) as the baseline, runs `find_new_batches` + `process_batches` on the
object (parse, GX validation in chunks of ``intake.chunk_records``, writes, ledger), and reports
its peak RSS (``ru_maxrss``). The figure is peak - baseline: what intake added. It should stay
flat as the object grows; the old whole-object intake grew by about 5 KB per record.

``--compare-src DIR`` runs the same sizes with the library from another checkout's ``src/`` (e.g.
the main branch) in the same way, so the two are printed side by side from one run.

N copies of one file repeat every sentence N times, so from 2 copies on most lines are
``duplicate_record``: dropped and reported, not bad rows (``validation.duplicates_are_bad_rows`` is
false), so the unique records are accepted. Every line is still parsed and written (accepted, or
quarantined as a duplicate) and every unique record validated, which is what is measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_json, load_average, row  # noqa: E402

DEFAULT_FILE = REPO.parent / "shared" / "data" / "cluener" / "train.json"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(bucket: str, src: str) -> int:
    """One measurement (runs in its own process): prints one JSON line."""
    if src:
        sys.path.insert(0, src)
    import great_expectations  # noqa: F401
    import pandas  # noqa: F401

    from retrain import validate  # noqa: F401
    from retrain.config import load_settings
    from retrain.ingest import find_new_batches, process_batches
    from retrain.storage import ObjectStore, client_from_env

    settings = load_settings(environ={"RETRAIN__S3__BUCKET": bucket})
    store = ObjectStore(client_from_env(), bucket)
    base = _rss_mib()
    t0 = time.perf_counter()
    plan = find_new_batches(store, settings)
    result = process_batches(store, settings, plan.objects, "bench__memory")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "read": result.read,
                "accepted": result.accepted,
                "quarantined": result.quarantined,
                "baseline_mib": base,
                "peak_mib": peak,
                "added_mib": peak - base,
                "seconds": seconds,
                "chunk_records": getattr(settings.intake, "chunk_records", None),
                "retrain": __import__("retrain").__file__,
            }
        )
    )
    return 0


def upload_copies(store: Any, key: str, path: Path, copies: int) -> int:
    """N copies of ``path`` as one object, streamed (multipart) without holding it in memory."""
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"

    class Copies:
        def __init__(self) -> None:
            self.left, self.buf = copies, b""

        def read(self, n: int = -1) -> bytes:
            while (n < 0 or len(self.buf) < n) and self.left:
                self.buf += data
                self.left -= 1
            out, self.buf = (self.buf, b"") if n < 0 else (self.buf[:n], self.buf[n:])
            return out

    store.client.upload_fileobj(Copies(), store.bucket, key)
    return len(data) * copies


def measure(moto: Any, path: Path, copies: int, src: str) -> dict[str, Any]:
    from retrain.storage import ObjectStore

    bucket = f"bench-mem-{copies}-{abs(hash(src)) % 10**6}-{int(time.time())}"
    store = ObjectStore(moto.client(), bucket)
    store.ensure_bucket()
    size = upload_copies(store, f"incoming/train-x{copies}.json", path, copies)
    env = {**os.environ, **moto.env(), "PYTHONPATH": src or ""}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", bucket, "--src", src],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({copies}x, src {src or 'this checkout'}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(copies=copies, object_mib=size / 2**20)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE)
    ap.add_argument("--copies", default="1,3,6")
    ap.add_argument("--compare-src", default="", help="another checkout's src/ to measure side by side")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--src", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.src)
    if not args.file.exists():
        print(f"{args.file}: not found (CLUENER lives in ../shared/data/cluener/)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "src"))
    from tests.support.stack import MotoServer

    copies = [int(c) for c in args.copies.split(",")]
    sources = [("this checkout", "")] + ([("compare", args.compare_src)] if args.compare_src else [])
    results: dict[str, list[dict[str, Any]]] = {}
    load = load_average()
    with MotoServer() as moto:
        for name, src in sources:
            results[name] = [measure(moto, args.file, n, src) for n in copies]
    print(
        f"intake peak memory vs object size — {args.file.name} copies; "
        f"load average {load} -> {load_average()}"
    )
    head = f"{'copies':>6}{'object MiB':>11}{'records':>9}"
    for name, _ in sources:
        head += f"{'+MiB ' + name[:12]:>22}{'s':>7}"
    print(head)
    for i, n in enumerate(copies):
        first = results[sources[0][0]][i]
        line = f"{n:>5}x{first['object_mib']:>11.1f}{first['read']:>9,}"
        for name, _ in sources:
            r = results[name][i]
            line += f"{r['added_mib']:>22.0f}{r['seconds']:>7.0f}"
        print(line)
    for name, _ in sources:
        r0 = results[name][0]
        print(
            f"{name}: {r0['retrain']}, baseline RSS {r0['baseline_mib']:.0f} MiB after imports, "
            f"chunk_records {r0['chunk_records']}; outcomes "
            + "; ".join(
                f"{r['copies']}x accepted {r['accepted']} quarantined {r['quarantined']}"
                for r in results[name]
            )
        )
    if args.json:
        mine = results[sources[0][0]]
        rows = [
            row(
                f"intake peak RSS added, {r['copies']}x ({r['read']:,} records)",
                round(r["added_mib"], 1),
                "MiB",
                baseline=round(mine[0]["added_mib"], 1),
                note="ratio vs 1x: flat = 1.0",
            )
            for r in mine
        ]
        emit_json("intake_memory", rows, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

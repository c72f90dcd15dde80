#!/usr/bin/env python3
"""Run `make test`'s pytest lanes side by side and report them one after another.

    scripts/test_lanes.py [--jobs N] LOG_DIR NAME=COMMAND [NAME=COMMAND ...]

Each COMMAND runs with ``bash -c`` in a process group of its own, its output going to LOG_DIR/NAME.log;
at most N lanes (default: all) run at once, started in the order given as slots free up (the Makefile's
order pairs the lanes by their measured times). When a lane ends its log is printed whole (lanes never
interleave in CI's output), with its exit status and wall time; at the end a table of the lanes. Exit
status: 0 when every lane passed, else 1. On SIGINT/SIGTERM the lanes' process groups (started here,
known by PID) get SIGTERM.

Why lanes (README "Time on 2 cores"): much of the suite waits (on Airflow's scheduler loop, task
processes starting, poll intervals, Docker builds), so two pytest processes on 2 cores finish sooner than
one after the other; four at once were slower than two (the cores were saturated and timing-bound tests
failed), hence the slots. The lanes split the suite by markers that complement each other, so every
test still runs exactly once. Standard library only: it runs before either environment is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _parse(specs: list[str]) -> list[tuple[str, str]]:
    lanes = []
    for spec in specs:
        name, sep, command = spec.partition("=")
        if not sep or not name.isidentifier() or not command.strip():
            raise SystemExit(f"test_lanes.py: expected NAME=COMMAND, got {spec!r}")
        lanes.append((name, command))
    return lanes


Running = dict[str, tuple[subprocess.Popen[bytes], Path, float]]


def _start(name: str, command: str, log_dir: Path, running: Running, t0: float) -> None:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    running[name] = (proc, log, time.monotonic())
    at = time.monotonic() - t0
    print(f"test_lanes: {name} started at {at:.0f} s (pid {proc.pid}, log {log}): {command}", flush=True)


def _jobs(argv: list[str]) -> tuple[int, list[str]]:
    if argv[:1] != ["--jobs"]:
        return 0, argv
    if len(argv) < 2 or not argv[1].isdigit() or int(argv[1]) < 1:
        raise SystemExit("test_lanes.py: --jobs needs a positive integer")
    return int(argv[1]), argv[2:]


def main(argv: list[str]) -> int:
    jobs, argv = _jobs(argv)
    if len(argv) < 2:
        raise SystemExit(__doc__)
    log_dir = Path(argv[0])
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = _parse(argv[1:])
    jobs = jobs or len(waiting)
    t0 = time.monotonic()
    running: Running = {}

    def stop(signum: int, _frame: object) -> None:
        for proc, _, _ in running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    results: list[tuple[str, int, float]] = []
    while running or waiting:
        while waiting and len(running) < jobs:
            _start(*waiting.pop(0), log_dir, running, t0)
        for name, (proc, log, started) in list(running.items()):
            if proc.poll() is None:
                continue
            wall = time.monotonic() - started
            del running[name]
            results.append((name, proc.returncode, wall))
            head = f"lane {name}: exit {proc.returncode} after {wall:.0f} s; its output"
            print(f"\n===== {head} =====", flush=True)
            sys.stdout.write(log.read_text(encoding="utf-8", errors="replace"))
            print(f"===== end of lane {name} =====", flush=True)
        time.sleep(1)
    print(f"\ntest_lanes: all lanes ended after {time.monotonic() - t0:.0f} s wall")
    for name, code, wall in results:
        print(f"  {name:<12} {'passed' if code == 0 else f'FAILED (exit {code})':<18} {wall:6.0f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

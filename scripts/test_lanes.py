#!/usr/bin/env python3
"""Run `make test`'s pytest lanes side by side and report them one after another.

    scripts/test_lanes.py [--jobs N] LOG_DIR NAME=COMMAND [NAME=COMMAND ...]

Each COMMAND runs with ``bash -c`` in a process group of its own, its output going to LOG_DIR/NAME.log;
at most N lanes (default: all) run at once, started in the order given as slots free up (the Makefile's
order pairs the lanes by their measured times). When a lane ends its log is printed whole (lanes never
interleave in CI's output), with its exit status, wall time and CPU time; at the end a table of the lanes
and how busy the machine's cores were while they ran (from /proc/stat, where there is one). Exit
status: 0 when every lane passed, else 1. On SIGINT/SIGTERM the lanes' process groups (started here,
known by PID) get SIGTERM.

Why lanes (README "Time on 2 cores"): much of the suite waits (on Airflow's scheduler loop, task
processes starting, poll intervals, Docker builds), so two pytest processes on 2 cores finish sooner than
one after the other; four at once were slower than two (the cores were saturated and timing-bound tests
failed), hence the slots. The cores' busy share says which way the suite's time can go: well below 100%,
the lanes wait and another slot could help; near it, only less work shortens `make test`. A lane's CPU
time is its process tree's as the kernel accounts it to the lane (children its processes waited for);
daemons (the Docker engine, the containers it runs) count in the machine's share, not in a lane's. The
lanes split the suite by markers that complement each other, so every
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
Result = tuple[str, int, float, float]  # name, exit status, wall s, CPU s


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of every core since boot, from /proc/stat; None without one."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_share(start: tuple[int, int] | None) -> str:
    end = _cpu_ticks()
    if start is None or end is None or end[1] <= start[1]:
        return "cores busy: unknown (no /proc/stat)"
    share = (end[0] - start[0]) / (end[1] - start[1])
    return f"cores busy: {100 * share:.0f}% of {os.cpu_count()} over the lanes (/proc/stat)"


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int, float] | None:
    """The lane's exit status and CPU seconds (its own and its waited-for children's) once it has
    ended, else None. os.wait4 instead of Popen.poll: it returns the resource usage."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


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
    ticks = _cpu_ticks()
    results: list[Result] = []
    while running or waiting:
        while waiting and len(running) < jobs:
            _start(*waiting.pop(0), log_dir, running, t0)
        for name, (proc, log, started) in list(running.items()):
            ended = _reap(proc)
            if ended is None:
                continue
            wall = time.monotonic() - started
            del running[name]
            results.append((name, ended[0], wall, ended[1]))
            head = f"lane {name}: exit {ended[0]} after {wall:.0f} s ({ended[1]:.0f} s of CPU); its output"
            print(f"\n===== {head} =====", flush=True)
            sys.stdout.write(log.read_text(encoding="utf-8", errors="replace"))
            print(f"===== end of lane {name} =====", flush=True)
        time.sleep(0.2)
    _report(results, time.monotonic() - t0, _busy_share(ticks))
    return 0 if all(code == 0 for _, code, _, _ in results) else 1


def _report(results: list[Result], wall: float, busy: str) -> None:
    print(f"\ntest_lanes: all lanes ended after {wall:.0f} s wall; {busy}")
    print(f"  {'lane':<12} {'result':<18} {'wall':>6}   {'CPU':>6}")
    for name, code, lane_wall, cpu in results:
        status = "passed" if code == 0 else f"FAILED (exit {code})"
        print(f"  {name:<12} {status:<18} {lane_wall:6.0f} s {cpu:6.0f} s")
    total = sum(cpu for *_, cpu in results)
    print(f"  {'sum':<12} {'':<18} {sum(r[2] for r in results):6.0f} s {total:6.0f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

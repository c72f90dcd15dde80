"""Fail when the installed Python packages differ from the image's lock (names and versions).

    python check_parity.py REQUIREMENTS [--project NAME]... [--optional REQUIREMENTS]

Run by the trainer image's build as its last step (docker/trainer/Dockerfile), so an image whose
installed set is not its variant's lock is never tagged; the image keeps both files in /opt/retrain/
so `docker run --entrypoint python IMAGE /opt/retrain/check_parity.py /opt/retrain/image-requirements.txt
--project retrain` re-checks a built (or pulled) image.

REQUIREMENTS holds `name==version` lines (hashes and comments ignored): the image's runtime closure of its
variant lock (requirements/trainer-<variant>.lock.txt, computed by scripts/build_trainer_image.sh). The
installed set (importlib.metadata, what `pip freeze` lists) must equal it exactly, with these allowances,
each printed:
  - --project NAME: the project itself, installed from the build context at any version;
  - torch's own pins: a CUDA torch pins its runtime (nvidia-*-cu12, triton, ...) with `==` in its metadata;
    those are allowed, at exactly the pinned version, so the closure is fixed by the torch version;
  - --optional FILE: the optional installs the build enabled (requirements/trainer-optional.lock.txt lines),
    at exactly their pinned versions; packages they pulled in that the lock lacks are listed and allowed,
    but a locked package whose version they changed still fails the check.
Standard library and pip's vendored `packaging` only: it runs in the image's venv.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip's vendored copy (the image's venv has pip, not necessarily packaging)
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = PIN.match(line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}


def torch_pins(have: dict[str, str]) -> dict[str, str]:
    """The exact (`==`) pins in the installed torch's metadata whose markers hold here."""
    if "torch" not in have:
        return {}
    pins = {}
    for text in md.requires("torch") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonical(req.name)] = exact[0]
    return pins


def compare(
    expected: dict[str, str],
    have: dict[str, str],
    projects: set[str],
    allowed: dict[str, str],
    optional: dict[str, str],
) -> tuple[list[str], list[str]]:
    """(problems, notes): every difference between `have` and `expected`, and each allowance used."""
    problems, notes = [], []
    for name, version in sorted(expected.items()):
        if name not in have:
            problems.append(f"missing: {name}=={version} is locked but not installed")
        elif have[name] != version:
            problems.append(f"version: {name} is {have[name]}, the lock says {version}")
    for name, version in sorted(have.items()):
        if name in expected:
            continue
        if name in projects:
            notes.append(f"project: {name} {version}")
        elif name in allowed:
            if version != allowed[name]:
                problems.append(f"version: {name} is {version}, torch pins {allowed[name]}")
            else:
                notes.append(f"torch's pin: {name}=={version}")
        elif name in optional:
            if version != optional[name]:
                problems.append(f"version: {name} is {version}, the optional lock says {optional[name]}")
            else:
                notes.append(f"optional: {name}=={version}")
        elif optional:
            notes.append(f"pulled in by an optional install: {name}=={version}")
        else:
            problems.append(f"extra: {name}=={version} is installed but not in the lock")
    for name in sorted(projects - have.keys()):
        problems.append(f"missing: the project {name} is not installed")
    for name, version in sorted(optional.items()):
        if name not in have:
            problems.append(f"missing: the optional install {name}=={version}")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("requirements", type=Path)
    ap.add_argument("--project", action="append", default=[], help="the project's own distribution name")
    ap.add_argument("--optional", type=Path, help="the optional installs this build enabled (pinned)")
    args = ap.parse_args(argv)
    expected = read_pins(args.requirements)
    have = installed()
    optional = read_pins(args.optional) if args.optional else {}
    problems, notes = compare(
        expected, have, {canonical(p) for p in args.project}, torch_pins(have), optional
    )
    for note in notes:
        print(f"parity: allowed {note}")
    if problems:
        print(f"parity: the installed packages differ from {args.requirements.name}:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"parity: {len(have)} installed packages match {args.requirements.name} ({len(expected)} locked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Download the wheels bench/gpu/run.py brings to the GPU machine into one folder, and check the size.

    python bench/gpu/prepare_wheels.py [--dest bench/gpu/wheels] [--also NAME==VER ...] [--limit-mib 64]

Run where the package index is reachable (this machine); ``pip download --no-deps --only-binary=:all:
--python-version 3.12 --platform manylinux2014_x86_64`` for the GPU machine's interpreter. The GPU
machine already has torch, transformers, peft and accelerate; what it lacks is brought:

- llamafactory 0.9.5 (the lock's), which requires transformers <= 5.6.0: transformers 5.6.0 and the
  matching tokenizers 0.22.2 come along (the machine's transformers may be newer);
- trl 0.24.0 and datasets 4.0.0 (LLaMA-Factory's SFT path), liger-kernel (tuned.yaml);
- small pure-Python imports of LLaMA-Factory's training path (omegaconf + antlr4 runtime, fire).

Versions come from requirements/trainer.lock.txt where it pins them. Anything more that the GPU
machine turns out to lack (run.py's probe step writes OUT/logs and results.json "probe") is added with
``--also``. Prints each wheel with its size and the total; exits 1 when the total is over --limit-mib.
The wheels are ignored by git (bench/gpu/.gitignore).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE.parents[1] / "requirements" / "trainer.lock.txt"
#: name -> version used when the lock does not pin it (None: the lock must)
BUNDLE: dict[str, str | None] = {
    "llamafactory": None,
    "transformers": None,
    "tokenizers": None,
    "trl": None,
    "datasets": None,
    "liger-kernel": "0.6.4",
    "omegaconf": None,
    "antlr4-python3-runtime": None,
    "fire": None,
}


def pins() -> dict[str, str]:
    found = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if m:
            found[m.group(1).lower().replace("_", "-")] = m.group(2)
    return found


def requirements(also: list[str]) -> list[str]:
    locked = pins()
    reqs = []
    for name, fallback in BUNDLE.items():
        version = locked.get(name, fallback)
        reqs.append(f"{name}=={version}" if version else name)
    return reqs + also


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=HERE / "wheels")
    ap.add_argument("--also", nargs="*", default=[], help="more requirements (NAME==VERSION)")
    ap.add_argument("--limit-mib", type=float, default=64.0)
    args = ap.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements(args.also)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
           "--implementation", "cp", "-d", str(args.dest), *reqs]  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    wheels = sorted(args.dest.glob("*.whl"))
    total = 0
    for w in wheels:
        size = w.stat().st_size
        total += size
        print(f"{size / 2**20:8.2f} MiB  {w.name}")
    print(f"{total / 2**20:8.2f} MiB  total ({len(wheels)} wheels; limit {args.limit_mib:g} MiB)")
    if total > args.limit_mib * 2**20:
        print("over the limit: drop what the GPU machine already has", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the trainer's per-variant locks from the one source of truth, requirements/trainer.lock.txt
(and the hashes of requirements/airflow.lock.txt).

    python scripts/lock_trainer_variants.py            # (re)write the variant locks, hashing what is new
    python scripts/lock_trainer_variants.py --check    # exit 1 when a variant lock differs from what
                                                       # this script would write (no network)

One lock is resolved (requirements/trainer.lock.txt, torch==2.13.0); every variant lock is that lock with
its torch line made concrete (the local version label of the build) and sha256 hashes added:

  requirements/trainer-cpu.lock.txt    torch==2.13.0+cpu    dev/CI environment and retrain/trainer:cpu
  requirements/trainer-cu122.lock.txt  torch==2.13.0+cu126  retrain/trainer:cu122 (torch from PyTorch's
                                                            cu126 index; runs on a CUDA 12.2 driver, R535,
                                                            through CUDA minor-version compatibility)
  requirements/trainer-optional.lock.txt  the optional image installs (liger-kernel, flash-attn, vllm)

so the variants cannot drift apart: they differ in the torch line only, and `--check` (run by
tests/test_trainer_locks.py) fails when one was edited by hand or the source lock changed without a
re-run. Hashes: each pinned file is fetched once with `pip download --no-deps` from the configured indexes
(pip's own index settings; torch from TORCH_INDEX[variant]) into a temporary directory and hashed; a pin
whose name and version did not change keeps its hashes (no download). A file that cannot be fetched here
(the cu126 torch: PyTorch's index is unreachable on the development machines) is written without a hash
and with a comment saying so; run the script where the file can be fetched to add it.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from packaging.version import Version
except ImportError:  # pip's vendored copy
    from pip._vendor.packaging.utils import (  # type: ignore[no-redef]
        InvalidSdistFilename,
        InvalidWheelFilename,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
SOURCE = REQ / "trainer.lock.txt"
TORCH_VERSION = "2.13.0"
# variant -> (local version label of torch, the index that serves that build)
VARIANTS = {
    "cpu": ("cpu", "https://download.pytorch.org/whl/cpu"),
    "cu122": ("cu126", "https://download.pytorch.org/whl/cu126"),
}
# The optional image installs (docker/trainer/install_deps.sh, INSTALL_*=1), pinned to what works with the
# lock: vllm 0.28.0 is the newest vLLM that pins torch==2.13.0 and accepts transformers 5.6.0 (0.29+ need
# transformers>=5.10.4, which LLaMA-Factory 0.9.5 refuses); liger-kernel 0.8.5 is the newest (torch>=2.1.2);
# flash-attn 2.8.3.post2 is the newest and is an sdist built against the installed torch.
OPTIONAL = ("liger-kernel==0.8.5", "flash-attn==2.8.3.post2", "vllm==0.28.0")
AIRFLOW_HEADER = [
    "# Airflow environment lock (scripts/install_airflow_env.sh, docker/airflow/Dockerfile): the closure",
    "# resolved here. Edit the pins by hand; then `python scripts/lock_trainer_variants.py` adds their",
    "# sha256 hashes (pip's hash-checking mode) and `--check` fails while one lacks them.",
]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._-]+\])?==([^\s;\\]+)")
HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


@dataclass
class Pin:
    name: str
    version: str
    index: str | None = None  # fetched from this index only (torch); None: pip's configured indexes
    extras: str = ""  # e.g. "[server]"

    @property
    def spec(self) -> str:
        return f"{self.name}{self.extras}=={self.version}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> list[Pin]:
    pins = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = PIN.match(line.strip())
        if m:
            pins.append(Pin(m.group(1), m.group(3), extras=m.group(2) or ""))
    return pins


def read_hashes(path: Path) -> dict[str, list[str]]:
    """`name==version` -> its hashes, from a lock this script wrote (continuation lines joined)."""
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        m = PIN.match(line.strip())
        if m:
            found[f"{canonical(m.group(1))}=={Version(m.group(3))}"] = HASH.findall(line)
    return found


def variant_pins(variant: str, req: Path) -> list[Pin]:
    label, index = VARIANTS[variant]
    pins = read_pins(req / SOURCE.name)
    torch = [p for p in pins if canonical(p.name) == "torch"]
    if [p.version for p in torch] != [TORCH_VERSION]:
        sys.exit(f"{SOURCE.name} must pin torch=={TORCH_VERSION} once (this script's TORCH_VERSION)")
    for p in torch:
        p.version, p.index = f"{TORCH_VERSION}+{label}", index
    return pins


def fetch_hashes(
    pins: list[Pin], known: dict[str, list[str]], offline: bool, files: Path | None = None
) -> dict[str, list[str]]:
    """Hashes for every pin: known ones kept, the rest hashed from the files pip downloads (or `files`)."""
    out = {key(p): list(known.get(key(p), [])) for p in pins}
    todo = [p for p in pins if not out[key(p)]]
    if offline or not todo:
        return out
    with tempfile.TemporaryDirectory(prefix="lock-trainer-") as tmp:
        dirs = [files] if files else []
        for n, index in enumerate({p.index for p in todo}):
            group = [p for p in todo if p.index == index and not _find(p, dirs)]
            dest = Path(tmp) / str(n)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
            cmd += ["--index-url", index, "--timeout", "20", "--retries", "1"] if index else []
            if group and subprocess.run([*cmd, *(p.spec for p in group)], capture_output=True).returncode:
                for p in group:  # one at a time: one file missing here must not hide the others' hashes
                    done = subprocess.run([*cmd, p.spec], capture_output=True, text=True)
                    if done.returncode:
                        print(f"no file for {p.spec} here: {done.stderr.strip()[-200:]}", file=sys.stderr)
            dirs.append(dest)
        for p in todo:
            out[key(p)] = ["sha256:" + hashlib.sha256(f.read_bytes()).hexdigest() for f in _find(p, dirs)]
    return out


def key(p: Pin) -> str:
    return f"{canonical(p.name)}=={Version(p.version)}"


def _find(pin: Pin, dirs: list[Path]) -> list[Path]:
    """The distribution files of exactly `pin` in `dirs` (wheels and sdists, by their file names)."""
    found = []
    for d in dirs:
        for f in d.glob("*") if d.is_dir() else []:
            try:
                if f.name.endswith(".whl"):
                    name, version, _, _ = parse_wheel_filename(f.name)
                else:
                    name, version = parse_sdist_filename(f.name)
            except (InvalidWheelFilename, InvalidSdistFilename):
                continue
            if name == canonical(pin.name) and version == Version(pin.version):
                found.append(f)
    return found


def render(header: list[str], pins: list[Pin], hashes: dict[str, list[str]]) -> str:
    lines = [*header]
    for p in pins:
        digests = sorted(set(hashes[key(p)]))
        if not digests:
            lines.append(f"# no hash: the file of {p.spec} could not be fetched where this lock was written")
            lines.append(p.spec)
            continue
        lines.append(" \\\n".join([p.spec, *(f"    --hash={d}" for d in digests)]))
    return "\n".join(lines) + "\n"


def header(variant: str) -> list[str]:
    label, index = VARIANTS[variant]
    return [
        "# GENERATED by scripts/lock_trainer_variants.py from requirements/trainer.lock.txt: do not edit.",
        f"# Variant {variant}: torch {TORCH_VERSION}+{label} from {index}; every other pin is the source",
        "# lock's. sha256 hashes of the files the configured indexes serve (pip's hash-checking mode).",
    ]


def build_all(
    offline: bool, downloaded: Path | None = None, req: Path = REQ, rehash: bool = False
) -> dict[Path, str]:
    files = {}
    known = (lambda path: {}) if rehash else read_hashes
    for variant in VARIANTS:
        path = req / f"trainer-{variant}.lock.txt"
        pins = variant_pins(variant, req)
        files[path] = render(header(variant), pins, fetch_hashes(pins, known(path), offline, downloaded))
    path = req / "trainer-optional.lock.txt"
    pins = [Pin(*s.split("==")) for s in OPTIONAL]
    head = [
        "# GENERATED by scripts/lock_trainer_variants.py (OPTIONAL): do not edit. The optional installs of",
        "# the trainer image (docker/trainer/install_deps.sh, INSTALL_LIGER_KERNEL/FLASH_ATTN/VLLM=1).",
    ]
    files[path] = render(head, pins, fetch_hashes(pins, known(path), offline, downloaded))
    # The Airflow lock is its own source: its pins stay, their hashes are added (the same rules).
    path = req / "airflow.lock.txt"
    pins = read_pins(path)
    files[path] = render(AIRFLOW_HEADER, pins, fetch_hashes(pins, known(path), offline, downloaded))
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare, write nothing, no network")
    ap.add_argument(
        "--files", type=Path, help="a folder of already downloaded distribution files to hash first"
    )
    ap.add_argument("--rehash", action="store_true", help="hash every file again (another platform)")
    ap.add_argument("--requirements", type=Path, default=REQ, help="the folder of the locks (tests)")
    args = ap.parse_args(argv)
    files = build_all(offline=args.check, downloaded=args.files, req=args.requirements, rehash=args.rehash)
    stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for p in stale:
            print(
                f"{p.name} is stale: run python scripts/lock_trainer_variants.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for p in stale:
        p.write_text(files[p], encoding="utf-8")
        print(f"wrote {p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

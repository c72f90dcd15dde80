"""One source of truth for the trainer's versions: the variant locks, their hashes, and the parity check.

- scripts/lock_trainer_variants.py writes requirements/trainer-{cpu,cu122}.lock.txt from
  requirements/trainer.lock.txt; `--check` fails when a variant lock drifted (shown on a copy whose source
  lock changed) and passes on the repository's locks.
- docker/trainer/check_parity.py (the trainer image build's last step) fails on a difference between an
  environment's installed packages and a lock: run for real against this (Airflow) environment, with a
  lock made from what is installed, then with one version changed, one package dropped, one added.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
GENERATOR = REPO / "scripts" / "lock_trainer_variants.py"
CHECKER = REPO / "docker" / "trainer" / "check_parity.py"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?)==([^\s\\]+)", re.M)


def _pins(path: Path) -> dict[str, str]:
    return dict(PIN.findall(path.read_text(encoding="utf-8")))


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=120)


def _checker():
    spec = importlib.util.spec_from_file_location("check_parity", CHECKER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ the locks


def test_the_variant_locks_are_what_the_generator_writes() -> None:
    done = _run(GENERATOR, "--check")
    assert done.returncode == 0, done.stderr


def test_a_changed_source_lock_makes_the_variant_locks_stale(tmp_path: Path) -> None:
    req = tmp_path / "requirements"
    shutil.copytree(REQ, req)
    source = req / "trainer.lock.txt"
    source.write_text(source.read_text().replace("peft==0.18.1", "peft==0.18.2"))
    done = _run(GENERATOR, "--check", "--requirements", req)
    assert done.returncode == 1
    assert "trainer-cpu.lock.txt is stale" in done.stderr and "trainer-cu122.lock.txt is stale" in done.stderr


def test_the_variants_differ_from_the_source_in_the_torch_line_only() -> None:
    source = _pins(REQ / "trainer.lock.txt")
    cpu, cu122 = _pins(REQ / "trainer-cpu.lock.txt"), _pins(REQ / "trainer-cu122.lock.txt")
    assert source["torch"] == "2.13.0"
    assert cpu.pop("torch") == "2.13.0+cpu" and cu122.pop("torch") == "2.13.0+cu126"
    del source["torch"]
    assert cpu == source == cu122
    assert "moto[server]" in cpu  # extras are kept


def test_every_pin_has_a_hash_except_the_files_that_cannot_be_had_here() -> None:
    """The cu126 torch (PyTorch's index is unreachable here) and flash-attn (an sdist whose metadata
    needs a CUDA build) are the only pins without a hash; each says so in a comment above it."""
    unhashed = {}
    for name in ("trainer-cpu", "trainer-cu122", "trainer-optional", "airflow"):
        text = (REQ / f"{name}.lock.txt").read_text(encoding="utf-8")
        for entry in re.split(r"(?<!\\)\n", text):
            m = PIN.match(entry)
            if m and "--hash=sha256:" not in entry:
                unhashed.setdefault(name, []).append(m.group(0))
                assert f"# no hash: the file of {m.group(0)} could not be fetched" in text
    assert unhashed == {
        "trainer-cu122": ["torch==2.13.0+cu126"],
        "trainer-optional": ["flash-attn==2.8.3.post2"],
    }


def test_the_image_and_the_dev_env_take_torch_from_their_variant_lock() -> None:
    dockerfile = (REPO / "docker" / "trainer" / "Dockerfile").read_text()
    assert 'ARG TORCH_SPEC="torch==2.13.0+cu126"' in dockerfile  # the cu122 lock's (the default variant)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126" in dockerfile
    assert "check_parity.py /opt/retrain/image-requirements.txt --project retrain" in dockerfile
    build = (REPO / "scripts" / "build_trainer_image.sh").read_text()
    assert "VARIANT_LOCK=$ROOT/requirements/trainer-$VARIANT.lock.txt" in build
    assert "--require-hashes" in build
    install = (REPO / "scripts" / "install_trainer_env.sh").read_text()
    assert 'LOCK="$ROOT/requirements/trainer-cpu.lock.txt"' in install and "--require-hashes" in install
    optional = _pins(REQ / "trainer-optional.lock.txt")
    assert optional == {"liger-kernel": "0.8.5", "flash-attn": "2.8.3.post2", "vllm": "0.28.0"}


# ------------------------------------------------------------------------------------ the parity check


@pytest.fixture
def this_env_lock(tmp_path: Path) -> Path:
    """A lock of exactly what this environment has installed, minus the project itself."""
    lines = sorted(
        f"{d.metadata['Name']}=={d.version}" for d in md.distributions() if d.metadata["Name"] != "retrain"
    )
    lock = tmp_path / "env.lock.txt"
    lock.write_text("# this environment\n" + "\n".join(lines) + "\n")
    return lock


def test_parity_passes_when_the_installed_set_is_the_lock(this_env_lock: Path) -> None:
    done = _run(CHECKER, this_env_lock, "--project", "retrain")
    assert done.returncode == 0, done.stderr
    assert "installed packages match env.lock.txt" in done.stdout
    assert "allowed project: retrain" in done.stdout


def test_parity_fails_on_a_changed_version_a_dropped_and_an_added_package(this_env_lock: Path) -> None:
    text = this_env_lock.read_text()
    pyyaml = re.search(r"^PyYAML==(\S+)$", text, re.M)
    assert pyyaml, "PyYAML is installed here"
    text = text.replace(pyyaml.group(0), "PyYAML==0.0.1")  # a version the lock does not have
    text = re.sub(r"^boto3==\S+\n", "", text, flags=re.M)  # installed but not locked
    this_env_lock.write_text(text + "no-such-package==1.0\n")  # locked but not installed
    done = _run(CHECKER, this_env_lock, "--project", "retrain")
    assert done.returncode == 1
    assert f"version: pyyaml is {pyyaml.group(1)}, the lock says 0.0.1" in done.stderr
    assert f"extra: boto3=={md.version('boto3')} is installed but not in the lock" in done.stderr
    assert "missing: no-such-package==1.0 is locked but not installed" in done.stderr


def test_parity_allows_torchs_exact_pins_and_the_optional_installs_only_at_their_versions() -> None:
    compare = _checker().compare
    expected = {"torch": "2.13.0+cu126", "transformers": "5.6.0"}
    torch_pins = {"nvidia-cublas-cu12": "12.6.4.1", "triton": "3.7.0"}
    have = {**expected, **torch_pins, "retrain": "0.1.0"}
    problems, notes = compare(expected, have, {"retrain"}, torch_pins, {})
    assert problems == [] and "torch's pin: triton==3.7.0" in notes
    problems, _ = compare(expected, {**have, "triton": "3.6.0"}, {"retrain"}, torch_pins, {})
    assert problems == ["version: triton is 3.6.0, torch pins 3.7.0"]
    # an optional install may pull in packages the lock lacks, but may not change a locked version
    optional = {"vllm": "0.28.0"}
    have_vllm = {**have, "vllm": "0.28.0", "xformers": "0.0.40"}
    problems, notes = compare(expected, have_vllm, {"retrain"}, torch_pins, optional)
    assert problems == [] and "pulled in by an optional install: xformers==0.0.40" in notes
    problems, _ = compare(
        expected, {**have_vllm, "transformers": "5.10.4"}, {"retrain"}, torch_pins, optional
    )
    assert problems == ["version: transformers is 5.10.4, the lock says 5.6.0"]
    problems, _ = compare(expected, have, {"retrain"}, torch_pins, optional)
    assert problems == ["missing: the optional install vllm==0.28.0"]

"""The CPU fixes for torchvision and torchaudio, applied to the environment of the interpreter that runs
this file. The one copy used by both scripts/install_trainer_env.sh (the dev trainer env) and
docker/trainer/install_deps.sh (the trainer image; the Dockerfile bind-mounts this file next to it).

    python docker/trainer/fix_cpu_torch.py

Idempotent. The fixes, and why (facts checked on torch 2.13.0+cpu, Python 3.11):

* torchvision: every PyPI Linux wheel is CUDA-linked; on a CPU-only torch its _C.so fails to load and
  `import torchvision` dies with "operator torchvision::nms does not exist", which transformers turns
  into "Could not import module 'PreTrainedModel'". Nothing we run imports torchvision (llamafactory
  lists it but never imports it; transformers treats it as optional), so it is not installed at all:
  the lock omits it, and a copy that is installed but fails to import is uninstalled here. One that
  imports (a CUDA torch with its matching torchvision) is kept.
* torchaudio: llamafactory imports it unconditionally (llamafactory/data/mm_plugin.py) but only uses it
  for audio inputs. No CPU build exists for torch 2.13 on the reachable indexes (PyPI wheels link
  libc10_cuda.so). torchaudio supports running without its compiled extension
  (torchaudio/_extension/utils.py:_load_lib returns False when lib/*.so is absent); only the C++ ops go
  (none are used for text SFT; the pure PyTorch functional API, e.g. resample, keeps working). So when,
  and only when, importing torchaudio fails because its extension cannot be loaded, the extension files
  are removed. Where CUDA is present (the GPU image) the import succeeds and nothing is touched.

Exits non-zero, with the reason, when torchaudio is missing or fails to import for another reason.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

CUDA_EXTENSION_ERRORS = ("Could not load this library", "libc10_cuda")


def _imports(module: str) -> subprocess.CompletedProcess[str]:
    """Import ``module`` in a fresh interpreter (a failed import can leave this one half-initialised)."""
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)


def fix_torchvision() -> None:
    """Uninstall torchvision when it is installed but cannot be imported."""
    try:
        importlib.metadata.distribution("torchvision")
    except importlib.metadata.PackageNotFoundError:
        print("   torchvision: not installed (as intended)")
        return
    if _imports("torchvision").returncode == 0:
        print("   torchvision: imports here; leaving it")
        return
    print("   torchvision: installed but broken (CUDA-linked wheel on CPU torch): uninstalling")
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", "torchvision"], check=True)


def fix_torchaudio() -> None:
    """Remove torchaudio's compiled extension when, and only when, it is what stops the import."""
    spec = importlib.util.find_spec("torchaudio")  # locates the package without importing it
    if spec is None or spec.origin is None:
        sys.exit("torchaudio is not installed, but llamafactory imports it: install the lock")
    probe = _imports("torchaudio")
    if probe.returncode == 0:
        print("   torchaudio: imports; nothing to do")
        return
    err = probe.stderr.strip().splitlines()
    if not any(marker in line for line in err for marker in CUDA_EXTENSION_ERRORS):
        print("\n".join(err[-15:]), file=sys.stderr)
        sys.exit("torchaudio fails to import for another reason than its CUDA extension: not touching it")
    lib_dir = Path(spec.origin).parent / "lib"
    removed = sorted(p.name for p in lib_dir.glob("*.so"))
    for name in removed:
        (lib_dir / name).unlink()
    (lib_dir / "RETRAIN_CPU_ONLY.txt").write_text(
        "docker/trainer/fix_cpu_torch.py removed these CUDA-linked extension files because they cannot\n"
        "load on a CPU-only torch; torchaudio runs without its C++ extension:\n"
        + "".join(f"  {n}\n" for n in removed)
    )
    check = _imports("torchaudio")
    if check.returncode != 0:
        print(check.stderr, file=sys.stderr)
        sys.exit("torchaudio still fails to import after removing its extension")
    print(f"   torchaudio: removed CUDA-linked extension files {removed}; it now imports")


if __name__ == "__main__":
    print(">> CPU fix 1/2: torchvision")
    fix_torchvision()
    print(">> CPU fix 2/2: torchaudio")
    fix_torchaudio()

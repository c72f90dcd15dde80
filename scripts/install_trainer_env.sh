#!/usr/bin/env bash
# Build (or repair) the trainer environment: LLaMA-Factory + the `retrain` package, on CPU.
#
#   scripts/install_trainer_env.sh VENV_DIR
#
# Idempotent: on an existing venv it re-checks every pin (a no-op when nothing changed) and
# re-applies the CPU fixes. Set PYTHON to choose the interpreter for a new venv (default python3.11).
#
# The CPU fixes, and why (facts checked on torch 2.13.0+cpu, Python 3.11):
#  * torchvision: every PyPI Linux wheel is CUDA-linked; on a CPU-only torch its _C.so fails to
#    load and `import torchvision` dies with "operator torchvision::nms does not exist", which
#    transformers turns into "Could not import module 'PreTrainedModel'". Nothing we run imports
#    torchvision (llamafactory lists it but never imports it; transformers treats it as optional),
#    so it is not installed at all: the lock omits it and the script removes a stray copy.
#  * torchaudio: llamafactory imports it unconditionally (llamafactory/data/mm_plugin.py) but
#    only uses it for audio inputs. No CPU build exists for torch 2.13 on the reachable indexes
#    (PyPI wheels link libc10_cuda.so; download.pytorch.org is unreachable). torchaudio supports
#    running without its compiled extension (torchaudio/_extension/utils.py:_load_lib returns
#    False when lib/*.so is absent); only the C++ ops go (none are used for text SFT; the pure
#    PyTorch functional API, e.g. resample, keeps working). So when, and only when, importing
#    torchaudio fails because its extension cannot be loaded, the extension files are removed.
#    Where CUDA is present (the GPU image) the import succeeds and nothing is touched.
set -euo pipefail

VENV_DIR=${1:?usage: scripts/install_trainer_env.sh VENV_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCK="$ROOT/requirements/trainer.lock.txt"
PYTHON=${PYTHON:-python3.11}
TORCH_PIN="torch==2.13.0"   # on EVERY pip command of this env, or the resolver pulls a CUDA torch

if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo ">> creating venv $VENV_DIR with $PYTHON"
  "$PYTHON" -m venv "$VENV_DIR"
fi
PY="$VENV_DIR/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"need Python 3.11, got {sys.version}"'

echo ">> installing the lock (no resolver: the lock is the complete closure)"
# (the grep drops pip's "Location ... is ignored" noise about this machine's partial local indexes)
"$PY" -m pip install --quiet --no-deps -r "$LOCK" "$TORCH_PIN" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
echo ">> installing the project (editable, no deps)"
"$PY" -m pip install --quiet --no-deps -e "$ROOT"

echo ">> CPU fix 1/2: torchvision"
if "$PY" -m pip show torchvision >/dev/null 2>&1; then
  if "$PY" -c 'import torchvision' >/dev/null 2>&1; then
    echo "   torchvision imports here; leaving it"
  else
    echo "   torchvision is installed but broken (CUDA-linked wheel on CPU torch): uninstalling"
    "$PY" -m pip uninstall --quiet -y torchvision
  fi
else
  echo "   not installed (as intended)"
fi

echo ">> CPU fix 2/2: torchaudio"
"$PY" - <<'PYEOF'
import importlib.util
import subprocess
import sys
from pathlib import Path

spec = importlib.util.find_spec("torchaudio")  # locates the package without importing it
if spec is None or spec.origin is None:
    sys.exit("   torchaudio is not installed, but llamafactory imports it: install the lock")
probe = subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True, text=True)
if probe.returncode == 0:
    print("   torchaudio imports; nothing to do")
    sys.exit(0)
lib_dir = Path(spec.origin).parent / "lib"
err = probe.stderr.strip().splitlines()
if not any("Could not load this library" in line or "libc10_cuda" in line for line in err):
    print("\n".join(err[-15:]), file=sys.stderr)
    sys.exit("   torchaudio fails to import for another reason than its CUDA extension: not touching it")
removed = sorted(p.name for p in lib_dir.glob("*.so"))
for name in removed:
    (lib_dir / name).unlink()
(lib_dir / "RETRAIN_CPU_ONLY.txt").write_text(
    "scripts/install_trainer_env.sh removed these CUDA-linked extension files because they cannot\n"
    "load on a CPU-only torch; torchaudio runs without its C++ extension:\n"
    + "".join(f"  {n}\n" for n in removed)
)
check = subprocess.run([sys.executable, "-c", "import torchaudio"], capture_output=True, text=True)
if check.returncode != 0:
    print(check.stderr, file=sys.stderr)
    sys.exit("   torchaudio still fails to import after removing its extension")
print(f"   removed CUDA-linked extension files {removed}; torchaudio now imports")
PYEOF

echo ">> verifying imports"
"$PY" -c "import llamafactory.train.tuner, peft, transformers; from transformers import PreTrainedModel; import retrain; print('   ok: torch', __import__('torch').__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"

echo ">> pip check (one known line allowed: llamafactory declares torchvision)"
set +e
CHECK=$("$PY" -m pip check 2>&1)
set -e
UNEXPECTED=$(printf '%s\n' "$CHECK" | grep -v -e '^No broken requirements found' \
  -e '^llamafactory [0-9.]* requires torchvision, which is not installed\.$' | grep -v '^$' || true)
if [ -n "$UNEXPECTED" ]; then
  printf 'pip check found problems:\n%s\n' "$UNEXPECTED" >&2
  exit 1
fi
echo ">> trainer environment ready: $VENV_DIR"

#!/usr/bin/env bash
# Build (or repair) the trainer environment: LLaMA-Factory + the `retrain` package, on CPU.
#
#   scripts/install_trainer_env.sh VENV_DIR
#
# Idempotent: on an existing venv it re-checks every pin (a no-op when nothing changed) and
# re-applies the CPU fixes. Set PYTHON to choose the interpreter for a new venv (default python3.11).
#
# The CPU fixes (torchvision is left out and a broken copy uninstalled; torchaudio's CUDA-linked
# extension is removed when, and only when, it is what stops `import torchaudio`) live in one place,
# docker/trainer/fix_cpu_torch.py, which the trainer image runs too; its docstring says why.
set -euo pipefail
#
# The lock: requirements/trainer-cpu.lock.txt, the CPU variant that scripts/lock_trainer_variants.py
# writes from requirements/trainer.lock.txt (the same pins as the trainer images; sha256 hashes, so pip
# runs in hash-checking mode). After the install the environment's packages are compared with it
# (docker/trainer/check_parity.py, the check the image build runs): anything else installed fails.
#
# Where the CPU build of torch comes from: `torch==2.13.0` from PyPI is the CUDA build (several GB of
# NVIDIA libraries), so the lock pins torch==2.13.0+cpu, taken from, in order:
#   1. a local wheel directory: $RETRAIN_TORCH_WHEELS, or pip's find-links (PIP_FIND_LINKS / pip
#      config), when it holds torch-2.13.0+cpu-*.whl (machines without access to PyTorch's index);
#   2. PyTorch's CPU index, $RETRAIN_TORCH_INDEX (default https://download.pytorch.org/whl/cpu), when it
#      answers;
# and says which. Neither: it stops and says what to do. Quiet: one line per step with its time, the
# full output in VENV_DIR/install.log (scripts/install_lib.sh).

VENV_DIR=${1:?usage: scripts/install_trainer_env.sh VENV_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCK="$ROOT/requirements/trainer-cpu.lock.txt"
PYTHON=${PYTHON:-python3.11}
TORCH_PIN=$(grep -o -m1 '^torch==[^ \\]*' "$LOCK")   # torch==2.13.0+cpu: the lock's
TORCH_VERSION=${TORCH_PIN#torch==}
TORCH_VERSION=${TORCH_VERSION%+cpu}
TORCH_INDEX=${RETRAIN_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
mkdir -p "$VENV_DIR"
INSTALL_LOG=$(cd "$VENV_DIR" && pwd)/install.log
: >"$INSTALL_LOG"
INSTALL_HINT="check that the package index is reachable (\`pip config list\`, proxy settings), that Python 3.11 \
is installed (or set PYTHON) and that the disk has ~6 GB free; then run \`make install\` again."
# shellcheck source=scripts/install_lib.sh
source "$ROOT/scripts/install_lib.sh"

torch_wheel_dir() {  # the first local directory holding the CPU torch wheel, if any
  local dirs=() more=() d
  [[ -z ${RETRAIN_TORCH_WHEELS:-} ]] || dirs+=("$RETRAIN_TORCH_WHEELS")
  if [[ -n ${PIP_FIND_LINKS:-} ]]; then read -r -a more <<<"$PIP_FIND_LINKS"; dirs+=("${more[@]}"); fi
  read -r -a more <<<"$(python3 -m pip config get global.find-links 2>/dev/null || true)"
  dirs+=("${more[@]}")
  for d in "${dirs[@]}"; do
    d=${d#file://}
    if compgen -G "$d/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then echo "$d"; return 0; fi
  done
  return 1
}

echo ">> trainer environment $VENV_DIR: LLaMA-Factory 0.9.5, transformers, peft, torch $TORCH_VERSION CPU (requirements/trainer-cpu.lock.txt)"
TORCH_ARGS=()
if WHEELS=$(torch_wheel_dir); then
  echo "   torch: the CPU wheel from the local directory $WHEELS"
  TORCH_ARGS=(--find-links "$WHEELS")
elif curl -fsS --max-time 15 -o /dev/null "$TORCH_INDEX/torch/" 2>/dev/null; then
  echo "   torch: the CPU build from PyTorch's index $TORCH_INDEX"
  TORCH_ARGS=(--extra-index-url "$TORCH_INDEX")
else
  echo "torch: PyTorch's CPU index $TORCH_INDEX does not answer and no local directory holds" \
    "torch-$TORCH_VERSION+cpu-*.whl. Download that wheel (on a machine with access) into a directory and" \
    "run again with RETRAIN_TORCH_WHEELS=/that/dir, or set RETRAIN_TORCH_INDEX to a mirror of the CPU index." >&2
  exit 1
fi

if [ ! -x "$VENV_DIR/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || { echo "$PYTHON not found: install Python 3.11 (apt-get install python3.11-venv) or set PYTHON" >&2; exit 1; }
  step "creating the venv with $PYTHON" "$PYTHON" -m venv "$VENV_DIR"
fi
PY="$VENV_DIR/bin/python"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"need Python 3.11, got {sys.version}"'

# no resolver: the lock is the complete closure; every file is checked against its hash
step "installing the lock ($(grep -c '^[A-Za-z].*==' "$LOCK") packages, $TORCH_PIN; hash-checked)" \
  "$PY" -m pip install --no-deps --require-hashes "${TORCH_ARGS[@]}" -r "$LOCK"
step "installing the project (editable)" "$PY" -m pip install --no-deps -e "$ROOT"

# The torchvision and torchaudio fixes: one copy, shared with the trainer image (docker/trainer/install_deps.sh).
step "CPU fixes for torchvision/torchaudio (docker/trainer/fix_cpu_torch.py)" "$PY" "$ROOT/docker/trainer/fix_cpu_torch.py"
step "importing llamafactory, transformers, peft, retrain" \
  "$PY" -c "import llamafactory.train.tuner, peft, transformers; from transformers import PreTrainedModel; import retrain"

pip_check() {  # one known line allowed: llamafactory declares torchvision
  local check unexpected
  check=$("$PY" -m pip check 2>&1 || true)
  echo "$check"
  unexpected=$(printf '%s\n' "$check" | grep -v -e '^No broken requirements found' \
    -e '^llamafactory [0-9.]* requires torchvision, which is not installed\.$' | grep -v '^$' || true)
  [[ -z $unexpected ]] || { printf 'pip check found problems:\n%s\n' "$unexpected"; return 1; }
}
step "pip check" pip_check
step "parity with the lock (docker/trainer/check_parity.py)" \
  "$PY" "$ROOT/docker/trainer/check_parity.py" "$LOCK" --project retrain --project pip
install_done "trainer environment ready: $("$PY" -c 'import importlib.metadata as m; print("torch", m.version("torch"), "| transformers", m.version("transformers"), "| peft", m.version("peft"), "| llamafactory", m.version("llamafactory"))')"

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

# The torchvision and torchaudio fixes: one copy, shared with the trainer image (docker/trainer/install_deps.sh).
"$PY" "$ROOT/docker/trainer/fix_cpu_torch.py"

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

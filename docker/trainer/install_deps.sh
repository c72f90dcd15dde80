#!/bin/sh
# Install the trainer's Python dependencies into the image's venv (run by the Dockerfile, as root).
#
#   install_deps.sh WHEELHOUSE REQUIREMENTS OPTIONAL_LOCK
#
# Build arguments (environment): TORCH_SOURCE (wheelhouse|index), TORCH_SPEC, TORCH_INDEX_URL,
# PIP_INDEX_URL (a mirror for the optional extras; default PyPI), INSTALL_FLASH_ATTN / _LIGER_KERNEL /
# _VLLM (1 = install flash-attn / liger-kernel / vllm at their pins in OPTIONAL_LOCK, hash-checked where
# the lock has a hash). The enabled ones are written to /opt/retrain/optional-installed.txt for the
# parity check (check_parity.py --optional).
# An extra CA bundle (build secret id=extra_ca) is appended to the system bundle for pip.
#
# The CPU fixes (torchvision left out where TORCH_SPEC does not name it, and uninstalled if it cannot
# import; torchaudio's CUDA-linked extension removed when, and only when, it is what stops
# `import torchaudio`) are fix_cpu_torch.py, next to this script, the copy scripts/install_trainer_env.sh
# applies to the dev environment; its docstring says why. With a CUDA torch both import and nothing
# is touched.
set -eu
WHEELHOUSE=$1
REQUIREMENTS=$2
OPTIONAL_LOCK=$3

if [ -s /run/secrets/extra_ca ]; then
  cat /etc/ssl/certs/ca-certificates.crt /run/secrets/extra_ca >/tmp/build-ca.pem
  export PIP_CERT=/tmp/build-ca.pem
fi
if [ -z "${PIP_INDEX_URL:-}" ]; then unset PIP_INDEX_URL; fi

echo ">> pip $(pip --version | cut -d' ' -f2); torch: $TORCH_SPEC from $TORCH_SOURCE"
# pip itself first (the venv's bundled pip may predate the lock's wheels' metadata)
if ls "$WHEELHOUSE"/pip-*.whl >/dev/null 2>&1; then
  pip install --no-index --find-links "$WHEELHOUSE" --upgrade pip
fi

case "$TORCH_SOURCE" in
  wheelhouse)
    # shellcheck disable=SC2086
    pip install --no-index --find-links "$WHEELHOUSE" --no-deps $TORCH_SPEC ;;
  index)
    # torch alone (--no-deps): its pure-Python dependencies (sympy, networkx, ...) come from the lock
    # below, not from the torch index; its CUDA runtime (the `==` pins in its metadata that the lock
    # lacks: nvidia-*, triton) comes from the torch index at exactly those pins, after the lock.
    # shellcheck disable=SC2086
    pip install --index-url "$TORCH_INDEX_URL" --no-deps $TORCH_SPEC ;;
  *) echo "TORCH_SOURCE must be wheelhouse or index, not '$TORCH_SOURCE'" >&2; exit 2 ;;
esac

# The runtime closure of the lock but torch (installed above), at the lock's versions: a package the
# venv already has at another version (the venv's own setuptools, say) is replaced by the lock's.
grep -v '^#' "$REQUIREMENTS" | grep -v '^$' | grep -v -i '^torch==' >/tmp/to-install.txt
echo ">> $(wc -l </tmp/to-install.txt) packages from the wheelhouse (--no-deps, pinned)"
pip install --no-index --find-links "$WHEELHOUSE" --no-deps -r /tmp/to-install.txt

if [ "$TORCH_SOURCE" = index ]; then
  python - >/tmp/torch-runtime.txt <<'PYEOF'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement
have = {d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()}
for text in md.requires("torch") or []:
    req = Requirement(text)
    pins = [s.version for s in req.specifier if s.operator == "=="]
    if pins and (req.marker is None or req.marker.evaluate({"extra": ""})) and req.name.lower().replace("_", "-") not in have:
        print(f"{req.name}=={pins[0]}")
PYEOF
  echo ">> torch's CUDA runtime from $TORCH_INDEX_URL: $(tr '\n' ' ' </tmp/torch-runtime.txt)"
  if [ -s /tmp/torch-runtime.txt ]; then
    pip install --index-url "$TORCH_INDEX_URL" --no-deps -r /tmp/torch-runtime.txt
  fi
fi

# The optional installs, at their pins (requirements/trainer-optional.lock.txt; hash-checked where the
# lock has a hash). liger-kernel and flash-attn need nothing the lock (and a CUDA torch's triton) lacks:
# --no-deps. vllm brings its own dependencies; the parity check lists them and fails if one of the
# lock's versions changed (vllm 0.28.0 pins torchaudio==2.11.0 where the lock has 2.11.1).
mkdir -p /opt/retrain
: >/opt/retrain/optional-installed.txt
optional() {  # optional NAME: its lock entry (with hashes) into /tmp/optional.txt
  python - "$OPTIONAL_LOCK" "$1" >/tmp/optional.txt <<'PYEOF'
import sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
print(next(line for line in text.splitlines() if line.startswith(sys.argv[2] + "==")))
PYEOF
  cat /tmp/optional.txt >>/opt/retrain/optional-installed.txt
}
if [ "${INSTALL_LIGER_KERNEL:-0}" = 1 ]; then optional liger-kernel; pip install --no-deps -r /tmp/optional.txt; fi
if [ "${INSTALL_FLASH_ATTN:-0}" = 1 ]; then
  # Builds against the installed torch; needs a matching prebuilt wheel or a CUDA toolkit (devel base).
  optional flash-attn; pip install --no-deps --no-build-isolation -r /tmp/optional.txt
fi
if [ "${INSTALL_VLLM:-0}" = 1 ]; then
  # Hash-checked alone, then its dependencies. vLLM's PyPI wheel is built for PyPI's torch (CUDA 13):
  # on the cu122 image use vLLM's CUDA 12 wheel (README, "Optional installs").
  optional vllm; pip install --no-deps -r /tmp/optional.txt
  pip install "$(sed 's/ .*//' /tmp/optional.txt)"
fi

# The torchvision and torchaudio fixes: one copy, shared with scripts/install_trainer_env.sh. The
# Dockerfile bind-mounts fix_cpu_torch.py next to this script.
python "$(dirname "$0")/fix_cpu_torch.py"

echo ">> import check"
python -c "import llamafactory.train.tuner, peft, transformers, torch, boto3, modelscope; \
from transformers import PreTrainedModel; \
print('   torch', torch.__version__, '| cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__)"

echo ">> pip check (allowed: llamafactory's torchvision requirement where torchvision is left out)"
set +e
CHECK=$(pip check 2>&1)
set -e
UNEXPECTED=$(printf '%s\n' "$CHECK" | grep -v -e '^No broken requirements found' \
  -e '^llamafactory [0-9.]* requires torchvision, which is not installed\.$' | grep -v '^$' || true)
if [ -n "$UNEXPECTED" ]; then
  printf 'pip check found problems:\n%s\n' "$UNEXPECTED" >&2
  exit 1
fi
rm -rf /tmp/build-ca.pem /tmp/to-install.txt /tmp/torch-runtime.txt /tmp/optional.txt /tmp/torchinductor_* /root/.cache

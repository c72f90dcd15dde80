#!/bin/sh
# Install the trainer's Python dependencies into the image's venv (run by the Dockerfile, as root).
#
#   install_deps.sh WHEELHOUSE REQUIREMENTS
#
# Build arguments (environment): TORCH_SOURCE (wheelhouse|index), TORCH_SPEC, TORCH_INDEX_URL,
# PIP_INDEX_URL (a mirror for the optional extras; default PyPI), INSTALL_FLASH_ATTN / _LIGER_KERNEL /
# _VLLM (1 = install FLASH_ATTN_SPEC / LIGER_KERNEL_SPEC / VLLM_SPEC from the index).
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
    # The CUDA wheels and their nvidia-* runtime libraries come from the torch index, which also
    # decides torch's own pins (sympy, triton, ...); the lock does not override them below.
    # shellcheck disable=SC2086
    pip install --index-url "$TORCH_INDEX_URL" $TORCH_SPEC ;;
  *) echo "TORCH_SOURCE must be wheelhouse or index, not '$TORCH_SOURCE'" >&2; exit 2 ;;
esac

# The runtime closure of the lock, minus what the torch step already installed.
pip list --format=freeze 2>/dev/null | sed 's/==.*//' | tr 'A-Z_.' 'a-z--' | sort -u >/tmp/installed.txt
grep -v '^#' "$REQUIREMENTS" | grep -v '^$' | while read -r req; do
  name=$(echo "$req" | sed 's/[[=<>!~;].*//' | tr 'A-Z_.' 'a-z--')
  if ! grep -qx "$name" /tmp/installed.txt; then echo "$req"; fi
done >/tmp/to-install.txt
echo ">> $(wc -l </tmp/to-install.txt) packages from the wheelhouse (--no-deps, pinned)"
pip install --no-index --find-links "$WHEELHOUSE" --no-deps -r /tmp/to-install.txt

if [ "${INSTALL_LIGER_KERNEL:-0}" = 1 ]; then pip install "$LIGER_KERNEL_SPEC"; fi
if [ "${INSTALL_FLASH_ATTN:-0}" = 1 ]; then
  # Builds against the installed torch; needs a matching prebuilt wheel or a CUDA toolkit (devel base).
  pip install --no-build-isolation "$FLASH_ATTN_SPEC"
fi
if [ "${INSTALL_VLLM:-0}" = 1 ]; then
  # vllm pins its own torch: installing it may replace TORCH_SPEC's torch (pip check below tells).
  pip install "$VLLM_SPEC"
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
rm -rf /tmp/build-ca.pem /tmp/installed.txt /tmp/to-install.txt /tmp/torchinductor_* /root/.cache

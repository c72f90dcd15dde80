#!/usr/bin/env bash
# The fresh-machine check: README's commands in a clean container, as a new user runs them.
#
#   scripts/fresh_machine_check.sh [--test] [STATE_DIR]      (root; STATE_DIR default .work/fresh)
#
# 1. a private Docker engine (scripts/dockerd.sh) and the project's Debian base image
#    retrain/base:bookworm (scripts/build_base_image.sh: debootstrap minbase, no PostgreSQL, no Redis,
#    no Python packages);
# 2. a clean clone of this checkout's HEAD (committed files only) in STATE_DIR/src;
# 3. in a container of that image (host network, so the package registries are reachable): the README's
#    Requirements (apt-get install make python3.11 python3.11-venv …), then `make demo`; with --test,
#    `make test` as well (it installs its own Debian packages; the Docker tests need a privileged
#    container for their engine, which this script does not give: expect them to fail there).
#
# Where pip gets packages: a user's machine uses PyPI, and PyTorch's CPU index for torch (see
# scripts/install_trainer_env.sh). Here PyTorch's index cannot be reached, and pip is configured with
# local wheel directories / file:// indexes; the script reads this machine's pip configuration
# (`pip config list` and PIP_* variables), mounts every local directory it names read-only at the same
# path, and gives the container the same settings, so torch==2.13.0+cpu comes from the local wheel
# directory (RETRAIN_TORCH_WHEELS) — the install says so in its output. pip's CA bundle (`cert`: this
# machine reaches PyPI through a TLS-inspecting proxy) is mounted as one read-only file. Nothing else of
# the host is mounted. Prints each phase's wall time; the container's full output is in STATE_DIR/container.log.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
RUN_TEST=0
if [[ ${1:-} == --test ]]; then RUN_TEST=1; shift; fi
STATE_DIR=${1:-$REPO/.work/fresh}
mkdir -p "$STATE_DIR"; STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
IMAGE=retrain/base:bookworm
die() { echo "fresh_machine_check.sh: $*" >&2; exit 1; }
note() { echo "fresh_machine_check.sh: $*" >&2; }
[[ $(id -u) -eq 0 ]] || die "needs root (the private Docker engine, debootstrap)"
T0=$SECONDS

DOCKER_HOST=$("$REPO/scripts/dockerd.sh" start "$STATE_DIR/docker")
export DOCKER_HOST
trap '"$REPO/scripts/dockerd.sh" stop "$STATE_DIR/docker" >&2 || true' EXIT
"$REPO/scripts/build_base_image.sh" "$IMAGE"
note "engine and base image ready after $((SECONDS - T0)) s"

rm -rf "$STATE_DIR/src"
git clone --quiet --no-local "$REPO" "$STATE_DIR/src"
note "clean clone of $(git -C "$REPO" rev-parse --short HEAD) in $STATE_DIR/src"

# This machine's pip settings, for the container (see the header).
PIP_CONF=$STATE_DIR/pip.conf
MOUNTS=()
mount_dir() {
  local d=${1#file://}
  [[ -d $d || -f $d ]] || return 0
  [[ -f $d ]] && d=$(dirname "$d")
  [[ " ${MOUNTS[*]} " == *" -v $d:$d:ro "* ]] || MOUNTS+=(-v "$d:$d:ro")
}
python3 - "$PIP_CONF" <<'EOF'
import os, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.partition(".")
    if section in ("global", "install") and name in ("find-links", "extra-index-url", "index-url", "constraint", "cert"):
        conf[name] = value.strip().strip("'\"")
for env, name in (("PIP_FIND_LINKS", "find-links"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                  ("PIP_INDEX_URL", "index-url"), ("PIP_CONSTRAINT", "constraint")):
    if os.environ.get(env):
        conf[name] = os.environ[env]
if os.environ.get("PIP_CERT"):
    conf["cert"] = os.environ["PIP_CERT"]
with open(sys.argv[1], "w") as f:
    f.write("[global]\ndisable-pip-version-check = true\ndefault-timeout = 180\n")
    f.writelines(f"{k} = {v}\n" for k, v in conf.items())
EOF
while read -r value; do
  for item in $value; do mount_dir "$item"; done
done < <(sed -n 's/^\(find-links\|constraint\) = //p' "$PIP_CONF")
# This machine reaches the package index through a TLS-inspecting proxy whose CA is in the host's bundle
# (pip's `cert`): that one file goes in read-only, as the container's pip cert.
HOST_CERT=$(sed -n 's/^cert = //p' "$PIP_CONF")
if [[ -n $HOST_CERT && -f $HOST_CERT ]]; then
  MOUNTS+=(-v "$HOST_CERT:/etc/ssl/host-pip-ca.pem:ro")
  sed -i 's|^cert = .*|cert = /etc/ssl/host-pip-ca.pem|' "$PIP_CONF"
fi
# A file:// index's pages link its files relatively (../../files/…): mount the index's parent folder.
while read -r value; do
  for item in $value; do [[ $item == file://* ]] && mount_dir "$(dirname "${item#file://}")"; done
done < <(sed -n 's/^\(extra-index-url\|index-url\) = //p' "$PIP_CONF")
TORCH_WHEELS=$(for m in "${MOUNTS[@]}"; do [[ $m == -v ]] && continue; d=${m%%:*}; \
  compgen -G "$d/torch-2.13.0+cpu-*.whl" >/dev/null && { echo "$d"; break; }; done || true)
note "pip settings for the container: $(tr '\n' ' ' <"$PIP_CONF")"
note "local package directories mounted read-only: $(printf '%s ' "${MOUNTS[@]}" | sed 's/-v //g')"
[[ -n $TORCH_WHEELS ]] && note "torch: PyTorch's CPU index is not reachable here; the CPU wheel comes from $TORCH_WHEELS"

COMMANDS='set -e; t=$SECONDS
export DEBIAN_FRONTEND=noninteractive
echo "== fresh container: $(. /etc/os-release; echo $PRETTY_NAME); psql: $(command -v psql || echo none);" \
  "redis-server: $(command -v redis-server || echo none); python3.11: $(command -v python3.11 || echo none)"
apt-get update -qq && apt-get install -y -qq make python3.11 python3.11-venv ca-certificates curl git >/dev/null
echo "== README Requirements installed in $((SECONDS - t)) s"
cd /src; t=$SECONDS
make demo
echo "== make demo passed in $((SECONDS - t)) s"
if [ "$RUN_TEST" = 1 ]; then t=$SECONDS; make test; echo "== make test passed in $((SECONDS - t)) s"; fi'
T1=$SECONDS
set +e
docker run --rm --network host -v "$STATE_DIR/src:/src" -v "$PIP_CONF:/etc/pip.conf:ro" "${MOUNTS[@]}" \
  -e RUN_TEST=$RUN_TEST -e RETRAIN_TORCH_WHEELS="$TORCH_WHEELS" "$IMAGE" bash -c "$COMMANDS" \
  2>&1 | tee "$STATE_DIR/container.log" | grep --line-buffered -E '^(==|>>|   )|Airflow metadata DB|retrain.demo: night|total [0-9]+s'
rc=${PIPESTATUS[0]}
set -e
note "container: exit $rc after $((SECONDS - T1)) s; whole check $((SECONDS - T0)) s; log $STATE_DIR/container.log"
exit "$rc"

#!/usr/bin/env bash
# Build the trainer image (docker/trainer/Dockerfile).
#
#   DOCKER_HOST=unix://… scripts/build_trainer_image.sh [--variant cpu|cu122] [--tag TAG]
#       [--base IMAGE] [--extra-ca FILE] [--no-cache] [--build-arg NAME=VALUE]...
#
#   cpu   (default; dev/CI)  FROM retrain/base:bookworm (scripts/build_base_image.sh makes it when
#         missing), torch 2.13.0+cpu, every wheel from the wheelhouse: pip never touches the network
#         inside the build (apt fetches python3.11 over host networking)      -> retrain/trainer:cpu
#   cu122 (production)       FROM the Dockerfile's BASE_IMAGE (nvidia/cuda:12.2.2-...-ubuntu22.04),
#         torch 2.13.0+cu126 from PyTorch's cu126 index (the lock's torch line), the rest from the
#         wheelhouse                                                        -> retrain/trainer:cu122
# Each variant installs requirements/trainer-<variant>.lock.txt (scripts/lock_trainer_variants.py
# writes both from requirements/trainer.lock.txt); the build's last step fails when the image's
# installed packages differ from it (docker/trainer/check_parity.py).
#
# Steps: (1) the wheelhouse ~/.cache/retrain/wheelhouses/trainer (RETRAIN_WHEELHOUSES moves the folder;
# one build at a time holds it) from requirements/trainer-cpu.lock.txt with the trainer
# env's pip in hash-checking mode (torch 2.13.0+cpu from the local wheel; pip's cache makes a rebuild
# fast; skipped when the lock did not change); (2) the image's requirement list: the runtime closure of
# requirements/trainer.in (test tools left out) read from the wheels' metadata, pinned to the variant's
# lock; (3) a lean build context in build/trainer-context/; (4) `docker build` with BuildKit.
# --extra-ca FILE: a PEM bundle trusted in addition to the system CAs during the build only (a
# TLS-intercepting proxy), passed as a build secret, never stored in the image.
# Prints the build time and the image size. Needs a Docker engine (scripts/dockerd.sh start DIR).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VARIANT=cpu
TAG=""
BASE=""
EXTRA_CA=""
NO_CACHE=()
BUILD_ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --variant) VARIANT=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --extra-ca) EXTRA_CA=$2; shift 2 ;;
    --no-cache) NO_CACHE=(--no-cache); shift ;;
    --build-arg) BUILD_ARGS+=(--build-arg "$2"); shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build_trainer_image.sh: $*" >&2; exit 1; }
note() { echo "build_trainer_image.sh: $*" >&2; }

case $VARIANT in
  cpu)
    TAG=${TAG:-retrain/trainer:cpu}
    BASE=${BASE:-retrain/base:bookworm}
    BUILD_ARGS=(--build-arg TORCH_SOURCE=wheelhouse "${BUILD_ARGS[@]}") ;;
  cu122)
    TAG=${TAG:-retrain/trainer:cu122}
    # the Dockerfile's default (pinned by digest there) unless --base says otherwise
    BASE=${BASE:-$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/docker/trainer/Dockerfile")}
    BUILD_ARGS=(--build-arg TORCH_SOURCE=index "${BUILD_ARGS[@]}") ;;
  *) die "--variant must be cpu or cu122" ;;
esac
# The variant's lock: its torch line is the torch the image gets (TORCH_SPEC), the rest the closure's pins.
VARIANT_LOCK=$ROOT/requirements/trainer-$VARIANT.lock.txt
TORCH_PIN=$(grep -o -m1 '^torch==[^ \\]*' "$VARIANT_LOCK") || die "no torch pin in $VARIANT_LOCK"
BUILD_ARGS=(--build-arg "TORCH_SPEC=$TORCH_PIN" "${BUILD_ARGS[@]}")
[[ -z $EXTRA_CA || -s $EXTRA_CA ]] || die "--extra-ca $EXTRA_CA: no such (non-empty) file"

PY=${RETRAIN_TRAINER_PYTHON:-$ROOT/.venv-tr/bin/python}
[[ -x $PY ]] || die "the trainer environment's python ($PY) is needed to build the wheelhouse; set RETRAIN_TRAINER_PYTHON"
# The wheelhouse always comes from the CPU variant's lock: the variants differ in the torch line only
# (scripts/lock_trainer_variants.py), and the cu122 torch comes from PyTorch's index in the build.
LOCK=$ROOT/requirements/trainer-cpu.lock.txt
ROOTS=$ROOT/requirements/trainer.in
# Kept outside the checkout, so a fresh clone neither rebuilds it nor changes Docker's cache key for it
# (sdists built again are not byte-identical wheels).
WHEELHOUSE=${RETRAIN_WHEELHOUSES:-${XDG_CACHE_HOME:-$HOME/.cache}/retrain/wheelhouses}/trainer
CONTEXT=$ROOT/build/trainer-context
# Test tools the trainer env has for its own tests; the image's closure leaves them out.
TEST_ONLY="pytest pytest-timeout moto"   # (ruff stays: gradio requires it)
# Build tools the image needs besides the lock (the venv's bundled ones may be older).
TOOLS="pip==$("$PY" -m pip --version | cut -d' ' -f2) setuptools==$("$PY" -c 'import setuptools; print(setuptools.__version__)')"

t0=$(date +%s)

# --- the builder: BuildKit is needed (RUN --mount) -------------------------------------------------
DOCKER=(docker)
if docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=1
else
  # A docker CLI without the buildx plugin cannot use BuildKit; Debian's docker.io CLI (20.10) has it
  # built in. Use it when the first `docker` on PATH is a newer CLI without buildx.
  found=""
  for cli in docker /usr/bin/docker; do
    v=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)
    major=${v%%.*}
    if [[ -n $v && $major =~ ^[0-9]+$ && $major -lt 23 ]]; then found=$cli; break; fi
  done
  [[ -n $found ]] || die "BuildKit is needed: install the docker buildx plugin or Debian's docker.io CLI"
  DOCKER=("$found")
  export DOCKER_BUILDKIT=1
fi
"${DOCKER[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine answers at ${DOCKER_HOST:-the default socket} (scripts/dockerd.sh start DIR)"

# --- (0) the local base image ------------------------------------------------------------------------
if [[ $BASE == retrain/base:* ]]; then
  "$ROOT/scripts/build_base_image.sh" "$BASE"
elif ! "${DOCKER[@]}" image inspect "$BASE" >/dev/null 2>&1; then
  note "base image $BASE is not local; the build will try to pull it"
fi
t_base=$(date +%s)

# --- (1) the wheelhouse ------------------------------------------------------------------------------
mkdir -p "$(dirname "$WHEELHOUSE")"
exec 8>>"$WHEELHOUSE.lock"
flock 8  # held to the end: another checkout's build waits, then finds it up to date
stamp=$( { cat "$LOCK"; echo "$TOOLS"; } | sha256sum | cut -d' ' -f1)
if [[ -f $WHEELHOUSE/.complete && $(cat "$WHEELHOUSE/.complete") == "$stamp" ]]; then
  note "wheelhouse up to date ($(ls "$WHEELHOUSE" | grep -c '\.whl$') wheels)"
else
  note "building the wheelhouse from $(basename "$LOCK") (pip cache: $("$PY" -m pip cache dir))"
  rm -rf "$WHEELHOUSE.new"
  # --no-deps: the lock is the complete closure. torch==2.13.0+cpu resolves to the local CPU wheel via
  # the machine's pip find-links (or PyTorch's CPU index); every file is checked against the lock's
  # sha256 hashes (pip's hash-checking mode); sdists (jieba, rouge-chinese) are checked, then built
  # into wheels here, so the image needs no compiler. The build tools (TOOLS) are not in the lock.
  mkdir -p "$ROOT/build"
  # torch+cpu: pip's find-links when they hold the wheel (as here), else PyTorch's CPU index when it
  # answers (an unreachable extra index would cost pip's retries on every package).
  TORCH_INDEX=()
  if curl -fsS --max-time 15 -o /dev/null "${RETRAIN_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}/torch/" 2>/dev/null; then
    TORCH_INDEX=(--extra-index-url "${RETRAIN_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
  fi
  # shellcheck disable=SC2086
  { "$PY" -m pip wheel --quiet --no-deps --require-hashes --wheel-dir "$WHEELHOUSE.new" \
      "${TORCH_INDEX[@]}" -r "$LOCK" \
    && "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELHOUSE.new" $TOOLS; } \
    2> >(grep -v -e "is ignored: it is neither a file nor a directory" >&2) \
    || die "pip wheel failed"
  echo "$stamp" >"$WHEELHOUSE.new/.complete"
  rm -rf "$WHEELHOUSE"
  mv "$WHEELHOUSE.new" "$WHEELHOUSE"
  note "wheelhouse: $(ls "$WHEELHOUSE" | grep -c '\.whl$') wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
fi
t_wheels=$(date +%s)

# --- (2) the image's requirement list ----------------------------------------------------------------
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/requirements" "$CONTEXT/docker"
cp "$ROOT/requirements/trainer-optional.lock.txt" "$CONTEXT/requirements/"
"$PY" - "$WHEELHOUSE" "$ROOTS" "$TEST_ONLY" "$TOOLS" "$VARIANT_LOCK" >"$CONTEXT/requirements/image-requirements.txt" <<'PYEOF'
"""Runtime closure of requirements/trainer.in over the wheelhouse, from each wheel's METADATA, pinned to
the variant's lock (for cu122 the torch line differs from the wheelhouse's CPU torch)."""
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

wheelhouse, roots_file, test_only, tools = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
locked = {}
for line in Path(sys.argv[5]).read_text().splitlines():
    m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
    if m:
        locked[canonicalize_name(m.group(1))] = m.group(2)
locked.update({canonicalize_name(t.split("==")[0]): t.split("==")[1] for t in tools})
# Left out on purpose (see scripts/install_trainer_env.sh): the CUDA-linked torchvision.
ABSENT_OK = {"torchvision"}
wheels = {}
for whl in wheelhouse.glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(whl.name)
    wheels[name] = (str(version), whl)

def requires(whl: Path) -> list[Requirement]:
    with zipfile.ZipFile(whl) as zf:
        meta = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = zf.read(meta).decode("utf-8")
    head = text.split("\n\n", 1)[0]
    return [Requirement(line.split(":", 1)[1].strip()) for line in head.splitlines()
            if line.startswith("Requires-Dist:")]

excluded = {canonicalize_name(n) for n in test_only}
queue = []
for line in roots_file.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
        queue.append(Requirement(line))
queue += [Requirement(t) for t in tools]
seen: dict[str, set[str]] = {}
absent = set()
while queue:
    req = queue.pop()
    name = canonicalize_name(req.name)
    if name in excluded:
        continue
    if name not in wheels:
        if name in ABSENT_OK:
            absent.add(name)
            continue
        sys.exit(f"{req} is needed by the image but has no wheel in {wheelhouse} (is it in the lock?)")
    extras = set(req.extras)
    if name in seen and extras <= seen[name]:
        continue
    seen.setdefault(name, set()).update(extras)
    for dep in requires(wheels[name][1]):
        envs = [{"extra": e} for e in ("", *sorted(seen[name]))]
        if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
            queue.append(dep)
print("# Generated by scripts/build_trainer_image.sh: the runtime closure of requirements/trainer.in,")
print(f"# pinned to {Path(sys.argv[5]).name}. Left out: test tools {sorted(excluded)}, and {sorted(absent)} (CPU fix).")
unlocked = sorted(set(seen) - set(locked))
if unlocked:
    sys.exit(f"needed by the image but not in {sys.argv[5]}: {unlocked}")
for name in sorted(seen):
    print(f"{name}=={locked[name]}")
PYEOF
n_req=$(grep -vc '^#' "$CONTEXT/requirements/image-requirements.txt")
note "image requirements: $n_req packages (runtime closure; test tools and torchvision left out)"

# --- (3) the build context ---------------------------------------------------------------------------
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$CONTEXT/"
mkdir -p "$CONTEXT/src" "$CONTEXT/conf"
tar -C "$ROOT/src" --exclude='__pycache__' --exclude='*.egg-info' --exclude='*.pyc' -cf - . | tar -C "$CONTEXT/src" -xf -
# conf/local holds per-machine overrides and credentials: never in an image.
tar -C "$ROOT/conf" --exclude='./local' --exclude='__pycache__' -cf - . | tar -C "$CONTEXT/conf" -xf -
cp -r "$ROOT/docker/trainer" "$CONTEXT/docker/trainer"
cp -al "$WHEELHOUSE" "$CONTEXT/wheelhouse" 2>/dev/null \
  || cp -a "$WHEELHOUSE" "$CONTEXT/wheelhouse"   # hard links (no copy) when on one filesystem

# --- (4) docker build --------------------------------------------------------------------------------
SECRET=()
if [[ -n $EXTRA_CA ]]; then SECRET=(--secret "id=extra_ca,src=$(cd "$(dirname "$EXTRA_CA")" && pwd)/$(basename "$EXTRA_CA")"); fi
previous=$("${DOCKER[@]}" image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
note "docker build $TAG (FROM $BASE) with ${DOCKER[*]}"
# --network host: apt inside the build resolves and connects as the host does (the private engine
# has no bridge); pip in the CPU build reads only the wheelhouse.
"${DOCKER[@]}" build --network host --progress plain "${NO_CACHE[@]}" "${SECRET[@]}" \
  --build-arg "BASE_IMAGE=$BASE" "${BUILD_ARGS[@]}" \
  --label "org.opencontainers.image.source=retrain" \
  --label "org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  -f "$CONTEXT/docker/trainer/Dockerfile" -t "$TAG" "$CONTEXT" >"$ROOT/build/trainer-image-build.log" 2>&1 \
  || { tail -n 40 "$ROOT/build/trainer-image-build.log" >&2; die "docker build failed (log: build/trainer-image-build.log)"; }
t_end=$(date +%s)
# The image this tag named before, now untagged: remove it (its layers shared with the new one stay).
current=$("${DOCKER[@]}" image inspect -f '{{.Id}}' "$TAG")
if [[ -n $previous && $previous != "$current" && \
      $("${DOCKER[@]}" image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null || echo 1) == 0 ]]; then
  "${DOCKER[@]}" image rm "$previous" >/dev/null 2>&1 || true
fi

size=$("${DOCKER[@]}" image inspect -f '{{.Size}}' "$TAG")
note "$TAG built: base $((t_base - t0)) s, wheelhouse $((t_wheels - t_base)) s, docker build $((t_end - t_wheels)) s, total $((t_end - t0)) s; image size $(awk -v s="$size" 'BEGIN {printf "%.2f GB", s/1e9}')"
echo "$TAG"

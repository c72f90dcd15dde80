#!/usr/bin/env bash
# Build every image docker-compose.yml needs, on a machine where no registry can be reached:
#
#   DOCKER_HOST=unix://… scripts/build_compose_images.sh
#
#   retrain/base:bookworm                 scripts/build_base_image.sh (debootstrap, imported)
#   retrain/airflow-base:3.3.2-python3.11 docker/compose/local/airflow-base.Dockerfile: the parts of
#                                         apache/airflow:3.3.2-python3.11 the stack relies on
#   retrain/airflow:3.3.2                 docker/airflow/Dockerfile (the production one) FROM the image
#                                         above, requirements/airflow.lock.txt from a wheelhouse
#   retrain/postgres:15-bookworm          docker/compose/local/postgres.Dockerfile (Debian's PostgreSQL)
#   retrain/redis:7.0-bookworm            docker/compose/local/redis.Dockerfile (Debian's Redis)
#   retrain/socket-proxy:1                docker/socket-proxy/Dockerfile (the production one) FROM the
#                                         Debian base instead of debian:bookworm-slim
#
# The trainer image is scripts/build_trainer_image.sh --variant cpu. MinIO has no Debian package:
# docker/compose/local.override.yml runs the moto server (in the Airflow image, from the lock) in its place.
#
# The Airflow lock reaches pip inside the build without network access to PyPI: the host's Airflow
# environment's pip builds a wheelhouse (~/.cache/retrain/wheelhouses/airflow, RETRAIN_WHEELHOUSES moves
# the folder, one build at a time holds it; skipped when the lock did not change), served as a PEP 503
# index on 127.0.0.1 for the duration of the build (the build uses host networking; the server is
# stopped by its PID) and given to the Dockerfile as PIP_INDEX_URL, the
# same argument a mirror uses. Every build is cached by Docker (a rebuild only redoes what changed).
# Prints one line per image with its build time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL=$ROOT/docker/compose/local
PY=${RETRAIN_AIRFLOW_PYTHON:-$ROOT/.venv-af/bin/python}
LOCK=$ROOT/requirements/airflow.lock.txt
WHEELHOUSE=${RETRAIN_WHEELHOUSES:-${XDG_CACHE_HOME:-$HOME/.cache}/retrain/wheelhouses}/airflow
# A fixed port keeps PIP_INDEX_URL (a build argument) the same between builds, so Docker's cache holds.
INDEX_PORT=${RETRAIN_WHEEL_INDEX_PORT:-38517}
BASE=retrain/base:bookworm
AIRFLOW_BASE=retrain/airflow-base:3.3.2-python3.11
AIRFLOW=${AIRFLOW_IMAGE:-retrain/airflow:3.3.2}
POSTGRES=retrain/postgres:15-bookworm
REDIS=retrain/redis:7.0-bookworm
SOCKET_PROXY=${SOCKET_PROXY_IMAGE:-retrain/socket-proxy:1}

die() { echo "build_compose_images.sh: $*" >&2; exit 1; }
note() { echo "build_compose_images.sh: $*" >&2; }
[[ -x $PY ]] || die "the Airflow environment's python ($PY) builds the wheelhouse; set RETRAIN_AIRFLOW_PYTHON"

# BuildKit is needed (RUN --mount): the buildx plugin, or Debian's docker.io CLI (20.10) that has it built in.
DOCKER=(docker)
if ! docker buildx version >/dev/null 2>&1; then
  [[ -x /usr/bin/docker ]] && [[ $(/usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null) == 20.* ]] \
    || die "BuildKit is needed: install the docker buildx plugin or Debian's docker.io CLI"
  DOCKER=(/usr/bin/docker)
fi
export DOCKER_BUILDKIT=1
"${DOCKER[@]}" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine answers at ${DOCKER_HOST:-the default socket} (scripts/dockerd.sh start DIR)"

build() {  # build TAG CONTEXT DOCKERFILE [ARGS...]: docker build with host networking, log in build/
  local tag=$1 context=$2 file=$3 t0 log
  shift 3
  t0=$(date +%s)
  log=$ROOT/build/image-$(echo "$tag" | tr '/:' '__').log
  "${DOCKER[@]}" build --network host --progress plain -f "$file" -t "$tag" "$@" "$context" >"$log" 2>&1 \
    || { tail -n 40 "$log" >&2; die "docker build $tag failed (log: $log)"; }
  note "$tag: $(( $(date +%s) - t0 )) s"
}

mkdir -p "$ROOT/build"
"$ROOT/scripts/build_base_image.sh" "$BASE"

# --- the Airflow lock as a wheelhouse and a PEP 503 index ------------------------------------------------
# The project's build backend (pyproject.toml [build-system]): pip's isolated build of the project
# fetches it from the same index.
TOOLS="setuptools>=68 wheel"
mkdir -p "$(dirname "$WHEELHOUSE")"
exec 8>>"$WHEELHOUSE.lock"
flock 8  # held to the end (the index serves it during the build): another checkout's build waits
stamp=$( { cat "$LOCK"; echo "$TOOLS"; } | sha256sum | cut -d' ' -f1)
if [[ -f $WHEELHOUSE/.complete && $(cat "$WHEELHOUSE/.complete") == "$stamp" ]]; then
  note "airflow wheelhouse up to date"
else
  t0=$(date +%s)
  rm -rf "$WHEELHOUSE.new"
  # The lock's own files, hash-checked (the image installs them with --require-hashes); then the
  # build backend, which the lock does not pin (pip's hash-checking mode refuses an unpinned line, so
  # it is a second call).
  "$PY" -m pip wheel --quiet --no-deps --require-hashes --wheel-dir "$WHEELHOUSE.new" -r "$LOCK" \
    2> >(grep -v -e "is ignored: it is neither a file nor a directory" >&2) || die "pip wheel (the lock) failed"
  # shellcheck disable=SC2086
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELHOUSE.new" $TOOLS || die "pip wheel ($TOOLS) failed"
  "$PY" - "$WHEELHOUSE.new" <<'PYEOF'
"""A PEP 503 simple index over the wheelhouse: simple/<normalised name>/index.html."""
import html
import re
import sys
from pathlib import Path

house = Path(sys.argv[1])
names: dict[str, list[str]] = {}
for whl in sorted(house.glob("*.whl")):
    names.setdefault(re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower(), []).append(whl.name)
for name, files in names.items():
    (house / "simple" / name).mkdir(parents=True)
    links = "".join(f'<a href="../../{html.escape(f)}">{html.escape(f)}</a><br>\n' for f in files)
    (house / "simple" / name / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
print(f"{len(names)} projects", file=sys.stderr)
PYEOF
  echo "$stamp" >"$WHEELHOUSE.new/.complete"
  rm -rf "$WHEELHOUSE"
  mv "$WHEELHOUSE.new" "$WHEELHOUSE"
  note "airflow wheelhouse: $(ls "$WHEELHOUSE" | grep -c '\.whl$') wheels, $(du -sh "$WHEELHOUSE" | cut -f1), $(( $(date +%s) - t0 )) s"
fi

"$PY" -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$INDEX_PORT" >"$ROOT/build/wheel-index.log" 2>&1 &
INDEX_PID=$!
trap 'kill "$INDEX_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$INDEX_PORT/simple/wheel/" >/dev/null 2>&1 && break
  kill -0 "$INDEX_PID" 2>/dev/null || die "the wheel index did not start on 127.0.0.1:$INDEX_PORT (port busy? set RETRAIN_WHEEL_INDEX_PORT)"
  sleep 0.2
done

# --- the images ----------------------------------------------------------------------------------------
build "$AIRFLOW_BASE" "$LOCAL" "$LOCAL/airflow-base.Dockerfile" --build-arg "BASE_IMAGE=$BASE"
build "$AIRFLOW" "$ROOT" "$ROOT/docker/airflow/Dockerfile" --build-arg "AIRFLOW_BASE_IMAGE=$AIRFLOW_BASE" \
  --build-arg "PIP_INDEX_URL=http://127.0.0.1:$INDEX_PORT/simple/"
build "$POSTGRES" "$LOCAL" "$LOCAL/postgres.Dockerfile" --build-arg "BASE_IMAGE=$BASE"
build "$REDIS" "$LOCAL" "$LOCAL/redis.Dockerfile" --build-arg "BASE_IMAGE=$BASE"
build "$SOCKET_PROXY" "$ROOT/docker/socket-proxy" "$ROOT/docker/socket-proxy/Dockerfile" --build-arg "BASE_IMAGE=$BASE"
echo "$AIRFLOW $POSTGRES $REDIS $SOCKET_PROXY"

#!/usr/bin/env bash
# Build (or refresh) the Airflow-side environment: Airflow 3.3 + providers, GX, MLflow, moto, pytest.
#
#   scripts/install_airflow_env.sh VENV_DIR
#
# Installs the project's own lock (requirements/airflow.lock.txt: the full closure resolved here;
# Airflow's official constraints file is not reachable, so the project pins its own), then the
# project itself editable without deps. Idempotent: a no-op when nothing changed. Every file is checked
# against the lock's sha256 hashes (--require-hashes; scripts/lock_trainer_variants.py adds them).
# Quiet: one line per step with its time; pip's and the import check's output (Great Expectations logs
# hundreds of "Skipping registering function" info lines on import) go to VENV_DIR/install.log, which a
# failure points at (scripts/install_lib.sh).
set -euo pipefail
VENV_DIR=${1:?usage: scripts/install_airflow_env.sh VENV_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
mkdir -p "$VENV_DIR"
INSTALL_LOG=$(cd "$VENV_DIR" && pwd)/install.log
: >"$INSTALL_LOG"
INSTALL_HINT="check that the package index is reachable (\`pip config list\`, proxy settings), that Python 3.11 \
is installed (or set PYTHON=/path/to/python3.11) and that the disk has ~3 GB free; then run \`make install\` again."
# shellcheck source=scripts/install_lib.sh
source "$ROOT/scripts/install_lib.sh"
echo ">> Airflow environment $VENV_DIR: Airflow 3.3.2, Great Expectations 1.24, MLflow 3.17, moto (requirements/airflow.lock.txt)"
if [ ! -x "$VENV_DIR/bin/python" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || { echo "$PYTHON not found: install Python 3.11 (apt-get install python3.11-venv) or set PYTHON" >&2; exit 1; }
  step "creating the venv with $PYTHON" "$PYTHON" -m venv "$VENV_DIR"
  step "upgrading pip" "$VENV_DIR/bin/python" -m pip install --upgrade pip
fi
step "installing the lock ($(grep -c '^[A-Za-z].*==' "$ROOT/requirements/airflow.lock.txt") packages, hash-checked)" \
  "$VENV_DIR/bin/python" -m pip install --no-deps --require-hashes -r "$ROOT/requirements/airflow.lock.txt"
step "installing the project (editable)" "$VENV_DIR/bin/python" -m pip install --no-deps -e "$ROOT"
step "pip check" "$VENV_DIR/bin/python" -m pip check
step "importing airflow, great_expectations, mlflow, moto, boto3" \
  "$VENV_DIR/bin/python" -c "import airflow, great_expectations, mlflow, moto, boto3"
install_done "Airflow environment ready: $("$VENV_DIR/bin/python" -c 'import importlib.metadata as m; print("apache-airflow", m.version("apache-airflow"), "| great-expectations", m.version("great-expectations"), "| mlflow", m.version("mlflow"))')"

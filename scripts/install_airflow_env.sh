#!/usr/bin/env bash
# Build (or refresh) the Airflow-side environment: Airflow 3.3 + providers, GX, MLflow, moto, pytest.
#
#   scripts/install_airflow_env.sh VENV_DIR
#
# Installs the project's own lock (requirements/airflow.lock.txt: the full closure resolved here;
# Airflow's official constraints file is not reachable, so the project pins its own), then the
# project itself editable without deps. Idempotent: a no-op when nothing changed.
set -euo pipefail
VENV_DIR=${1:?usage: scripts/install_airflow_env.sh VENV_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo ">> creating venv $VENV_DIR with $PYTHON"
  "$PYTHON" -m venv "$VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
fi
echo ">> installing requirements/airflow.lock.txt"
"$VENV_DIR/bin/python" -m pip install --quiet --no-deps -r "$ROOT/requirements/airflow.lock.txt"
"$VENV_DIR/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
"$VENV_DIR/bin/python" -m pip check
"$VENV_DIR/bin/python" -c "import airflow, great_expectations, mlflow, moto, boto3; print('airflow env ok:', airflow.__version__)"

#!/bin/bash
# /entrypoint of the local Airflow base image (airflow-base.Dockerfile): the subset of the official
# image's entrypoint that docker-compose.yml uses.
#   - _AIRFLOW_DB_MIGRATE=true: `airflow db migrate` before the command (airflow-init);
#   - an Airflow sub-command (api-server, scheduler, celery worker, ...) runs as `airflow <command>`;
#     anything else (bash, python, mlflow, moto_server, airflow ...) runs as given.
set -euo pipefail
if [[ ${_AIRFLOW_DB_MIGRATE:-false} == true ]]; then
  airflow db migrate
fi
case ${1:-} in
  api-server | scheduler | dag-processor | triggerer | celery | db | dags | tasks | pools | jobs | \
    version | config | connections | variables | info | standalone | --help)
    exec airflow "$@" ;;
esac
exec "$@"

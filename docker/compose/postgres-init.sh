#!/bin/sh
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d): MLflow's
# own role and its two databases (tracking/registry, and the basic-auth app's users) next to
# Airflow's. MLflow never uses the Airflow role: MLFLOW_DB_USER owns only its databases, and
# PUBLIC loses CONNECT on all three, so neither role can open the other's database.
# Names and the password come from the service's environment (.env). Idempotent.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v db="${MLFLOW_DB:-mlflow}" -v authdb="${MLFLOW_AUTH_DB:-mlflow_auth}" \
  -v role="${MLFLOW_DB_USER:-mlflow}" -v pw="${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}" \
  -v airflowdb="${AIRFLOW_DB:-$POSTGRES_DB}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'pw') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'authdb', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'authdb')\gexec
SELECT format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', d) FROM unnest(ARRAY[:'db', :'authdb', :'airflowdb']) AS d\gexec
SQL

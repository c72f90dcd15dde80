# One entry point for people and CI. Environments are built by the project's own scripts from its
# own lock files (see README "Install"); targets are idempotent.
SHELL := /bin/bash
AF_VENV ?= .venv-af
TR_VENV ?= .venv-tr
AF_PY := $(AF_VENV)/bin/python
TR_PY := $(TR_VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-fast scheduler-test lint bench clean

$(AF_VENV)/.installed: requirements/airflow.lock.txt scripts/install_airflow_env.sh pyproject.toml
	scripts/install_airflow_env.sh $(AF_VENV)
	touch $@

$(TR_VENV)/.installed: requirements/trainer-cpu.lock.txt scripts/install_trainer_env.sh docker/trainer/fix_cpu_torch.py docker/trainer/check_parity.py pyproject.toml
	scripts/install_trainer_env.sh $(TR_VENV)
	touch $@

install: $(AF_VENV)/.installed $(TR_VENV)/.installed

## The three-night demo under Airflow (moto S3, GX, LLaMA-Factory tiny model, MLflow; Airflow metadata on
## PostgreSQL when one answers, else embedded SQLite). Starts clean each run.
demo: install
	$(AF_PY) -m tests.support.demo

## The whole suite: unit, DAG integrity, integration, Docker engine, end to end. PostgreSQL and Redis:
## the machine's when they answer on 127.0.0.1:5432/6379, else private ones started (and stopped by
## PID) by scripts/test_services.sh, installed from Debian packages when missing.
## Seven lanes, two at a time (scripts/test_lanes.py --jobs 2; logs in .work/test-lanes; tests/conftest.py
## LANES): `docker` = every Docker test (one engine; the compose stack included); `units` = the Airflow
## env's unit and integration tests; `e2e` = the e2e tests outside `stacks`; `trainer` = the trainer env's
## tests; then the `stacks` modules (tests/conftest.py STACKS_MODULES: event-triggered, Celery scheduler,
## worker kill) one lane each, the short pieces that fill both slots to the end. Together: every test once
## (tests/test_environments.py checks the stacks lines here against STACKS_MODULES). Two at a time: four at
## once saturated the 2 cores (no faster, and timing-bound e2e tests failed). The order (a lane starts when
## a slot frees) comes from the lanes' measured times (README "Lanes, two at a time").
PYTEST_LANE = $(AF_PY) -m pytest -p no:cacheprovider -ra --durations=15 $(PYTEST_ARGS) --lane
test: install lint
	scripts/install_test_tools.sh
	scripts/test_services.sh .work/services python3 scripts/test_lanes.py --jobs 2 .work/test-lanes \
	  'e2e=$(PYTEST_LANE) e2e tests' \
	  'units=$(PYTEST_LANE) units tests' \
	  'docker=$(PYTEST_LANE) docker tests' \
	  'trainer=$(TR_PY) -m pytest -p no:cacheprovider -ra --durations=10 $(PYTEST_ARGS) tests' \
	  'events=$(PYTEST_LANE) stacks tests/e2e/test_event_triggered.py' \
	  'scheduler=$(PYTEST_LANE) stacks tests/e2e/test_celery_scheduler.py' \
	  'worker_kill=$(PYTEST_LANE) stacks tests/e2e/test_worker_kill.py'

## Without the slow end-to-end and Docker tests.
test-fast: install
	$(TR_PY) -m pytest -p no:cacheprovider -ra -m "not e2e and not docker" $(PYTEST_ARGS) tests
	$(AF_PY) -m pytest -p no:cacheprovider -ra -m "not e2e and not docker" $(PYTEST_ARGS) tests

## ner_retrain under the CeleryExecutor (api-server, scheduler, dag-processor, Celery worker, triggerer on
## 127.0.0.1; Postgres + Redis: the machine's, else private ones, see `test`), REST-, cron- and
## event-triggered, with and without a person's approval. Also part of `make test`.
scheduler-test: install
	scripts/test_services.sh .work/services $(AF_PY) -m pytest -p no:cacheprovider -ra --durations=10 $(PYTEST_ARGS) \
		tests/e2e/test_celery_scheduler.py tests/e2e/test_celery_approval.py tests/e2e/test_event_triggered.py

## Lint, format, type and size checks (ruff and mypy, configured in pyproject.toml; functions of src/ and
## plugins/ at most 80 lines); part of `make test`. The same hooks run before each commit with pre-commit
## (.pre-commit-config.yaml).
lint: install
	$(AF_VENV)/bin/ruff check .
	$(AF_VENV)/bin/ruff format --check .
	$(AF_VENV)/bin/mypy
	$(AF_PY) scripts/check_function_length.py src plugins

bench: install
	$(AF_PY) bench/run_all.py

clean:
	rm -rf .work build

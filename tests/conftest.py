"""Shared fixtures: a real S3 API (moto server on 127.0.0.1, stopped by PID) and settings."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

CLUENER = REPO.parent / "shared" / "data" / "cluener"

# Two environments (see README): the Airflow env (.venv-af) runs most tests, the trainer env
# (.venv-tr: torch, LLaMA-Factory) runs the modules listed in TRAINER_MODULES and only those.
# `make test` runs pytest once in each; each run collects only the modules its environment can run.
# A trainer module is declared here by path (it cannot even be imported in the Airflow env) and marks
# itself `pytestmark = pytest.mark.trainer`; tests/test_environments.py checks the two agree.
TESTS = Path(__file__).resolve().parent
TRAINER_MODULES = frozenset(
    {
        "bench/test_gpu_run.py",
        "evaluate/test_generate.py",
        "evaluate/test_run_evaluation.py",
        "support/test_tiny_model.py",
        "test_base_models_cache.py",
        "test_export.py",
        "train/test_train.py",
        "train/test_train_scoped.py",
        "train/test_warm_start.py",
    }
)
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_AIRFLOW = importlib.util.find_spec("airflow") is not None


def is_trainer_module(path: Path) -> bool:
    return path.resolve().relative_to(TESTS).as_posix() in TRAINER_MODULES


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    needs_trainer = is_trainer_module(collection_path)
    if needs_trainer and not HAS_TORCH:
        return True
    if not needs_trainer and not HAS_AIRFLOW:
        return True
    return None


# `make test` runs pytest in lanes, two at a time on the 2 cores (Makefile, scripts/test_lanes.py
# --jobs 2). A lane with one pytest process keeps the machine about half busy (measured: 46% of 2 cores
# while the e2e lane ran alone), because most of an end-to-end test waits on Airflow's scheduler loop,
# task processes starting, poll intervals and Docker builds; two lanes fill that time, four at once
# saturated the cores (no faster, and timing-bound tests failed). The trainer env's tests are a lane
# of their own (that environment collects only them). The Airflow env's lanes:
#   `--lane units`  the Airflow env's unit and integration tests;
#   `--lane docker` every Docker test: they share the session's one Docker engine and its image cache,
#                   so they cannot be split (the compose stack test is most of it);
#   `--lane stacks` the Celery-stack modules in STACKS_MODULES (scheduler, event-triggered, worker kill);
#                   make test runs each module as a lane of its own (`--lane stacks tests/e2e/…`);
#   `--lane e2e`    every other e2e test (the demo, approvals, the DAG fault suite, the UI).
# Celery stacks in different lanes may run at once: each has its own metadata DB, ports and Celery queue
# (tests/support/celery_stack.py), so sharing a Redis DB is safe. The lanes together are the whole suite,
# each test once (tests/test_environments.py checks it on collection).
LANES = ("units", "docker", "stacks", "e2e")
STACKS_MODULES = frozenset(
    {"e2e/test_celery_scheduler.py", "e2e/test_event_triggered.py", "e2e/test_worker_kill.py"}
)


def pytest_addoption(parser):
    parser.addoption(
        "--lane",
        choices=LANES,
        default=None,
        help="run one of make test's lanes (tests/conftest.py LANES); default: every test",
    )


def lane_of(item) -> str:
    if item.get_closest_marker("docker") is not None:
        return "docker"
    if item.get_closest_marker("e2e") is None:
        return "units"
    module = Path(str(item.fspath)).resolve().relative_to(TESTS).as_posix()
    return "stacks" if module in STACKS_MODULES else "e2e"


def pytest_collection_modifyitems(config, items):
    lane = config.getoption("lane")
    if lane is None:
        return
    keep = [item for item in items if lane_of(item) == lane]
    dropped = [item for item in items if lane_of(item) != lane]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def _migrated_metadata_templates():
    """Airflow metadata DBs of the session cloned from one migrated template (tests/support/stack.py
    `migrated_templates`): one `airflow db migrate` per session instead of one per stack."""
    if not HAS_AIRFLOW:
        yield
        return
    from tests.support.stack import migrated_templates

    with migrated_templates():
        yield


@pytest.fixture(scope="session")
def moto_server():
    from tests.support.stack import MotoServer

    with MotoServer() as server:
        yield server


@pytest.fixture
def bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(bucket_name, tmp_path, monkeypatch):
    from retrain.config import load_settings

    monkeypatch.setenv("RETRAIN_HOME", str(tmp_path / "home"))
    return load_settings(environ={"RETRAIN__S3__BUCKET": bucket_name})


@pytest.fixture
def store(moto_server, settings):
    from retrain.storage import ObjectStore

    s = ObjectStore(moto_server.client(), settings.s3.bucket)
    s.ensure_bucket()
    return s


@pytest.fixture(scope="session")
def cluener_dir() -> Path:
    if not (CLUENER / "train.json").exists():
        pytest.fail(f"real CLUENER data expected at {CLUENER} (../shared beside the repository)")
    return CLUENER

"""MLflow sqlite registries for tests, copied from one migrated per test process.

MLflow creates and migrates a new sqlite database (every table of tracking and the model registry,
by Alembic revision) the first time a store opens it: about 2 s of CPU each on the 2-core machine,
for every test that opens a fresh registry. A copy of an already migrated file opens in well under
0.1 s, and MLflow treats it as what it is, a database at the current revision with nothing in it but
the default experiment (which a fresh one has too).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_template: Path | None = None


def _migrated_template() -> Path:
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        atexit.register(shutil.rmtree, folder, True)
        db = folder / "mlflow.db"
        client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
        client.search_experiments()  # the tracking store: creates and migrates every table
        client.search_registered_models()  # the registry store on the same file
        _template = db
    return _template


def sqlite_uri(path: Path) -> str:
    """A fresh, migrated MLflow database at ``path`` (a copy of the process's template); its URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_template(), path)
    return f"sqlite:///{path}"

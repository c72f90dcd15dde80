"""The one shape of a stage launcher: before the stage, launch it, after it.

- clear: end whatever an earlier try of the stage left running on the backend (`clear_earlier_try`;
  the Docker launcher kills its orphan container, see `retrain_airflow.launchers.docker`), so that
  nothing but this try can write the run's output from here on;
- before: remove the stage's commit marker an earlier attempt left (`retrain.stages.uncommit`), so
  that only this attempt's output can pass the check after;
- launch: run ``retrain <stage> --run-uri <run_uri>`` (`stage_command`) on the backend, and end the
  task without retries (`StageInputError`, an ``AirflowFailException``) when it exits
  `retrain.errors.INPUT_ERROR_EXIT` (65): retrying an input error cannot mend it. Any other failure
  raises as usual, so Airflow retries it;
- after: an exit 0 is not enough: the stage's committed output must be there and be this run's
  (`retrain.stages.check_committed`, file names from `retrain.runs`).

`StageLauncher` is mixed into an operator class (first among its bases), which supplies `launch`
and `from_settings`; its ``execute`` runs the four steps and returns the run URI (the task's XCom).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from retrain.config import Settings
from retrain.errors import INPUT_ERROR_EXIT
from retrain.stages import check_committed, uncommit
from retrain.storage import ObjectStore, parse_s3_uri
from retrain_airflow import settings as glue
from retrain_airflow.s3 import object_store

log = logging.getLogger(__name__)


def stage_command(stage: str, run_uri: str) -> list[str]:
    """The one command line every launcher runs."""
    return ["retrain", stage, "--run-uri", run_uri]


class StageInputError(AirflowFailException):
    """The stage exited 65 (its input is wrong): the task fails now, without its retries."""


def input_error(stage: str, detail: str) -> StageInputError:
    """The exception that ends a task whose stage reported an input error."""
    return StageInputError(
        f"`retrain {stage}` exited with code {INPUT_ERROR_EXIT} (input error: retrying will not "
        f"help, so the task fails without retries); last output:\n{detail}"
    )


class StageLauncher:
    """before (uncommit) -> launch -> after (check the commit), for an operator that mixes it in."""

    stage: str
    run_uri: str
    aws_conn_id: str | None

    @classmethod
    def from_settings(cls, stage: str, run_uri: str, settings: Settings, **kwargs: Any) -> Any:
        """The operator for ``stage`` built from conf; keyword arguments override conf's."""
        raise NotImplementedError

    def launch(self, context: Any) -> None:
        """Run `stage_command` on the backend; raise `input_error` on exit 65, anything else on a crash."""
        raise NotImplementedError

    def _run_store(self) -> tuple[ObjectStore, str]:
        """The run's bucket through the connection ``aws_conn_id`` (conf's when None), and its prefix."""
        bucket, prefix = parse_s3_uri(self.run_uri)
        return object_store(glue.settings(), bucket, self.aws_conn_id), prefix

    def clear_earlier_try(self) -> None:
        """End what an earlier try of this stage left running (its worker died); nothing by default."""

    def before_stage(self) -> None:
        store, prefix = self._run_store()
        uncommit(store, prefix, self.stage)

    def after_stage(self) -> None:
        store, prefix = self._run_store()
        check_committed(store, prefix, self.stage)

    def execute(self, context: Any) -> str:
        self.clear_earlier_try()
        self.before_stage()
        self.launch(context)
        self.after_stage()
        return self.run_uri

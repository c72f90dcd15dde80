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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from retrain.config import Settings
from retrain.errors import INPUT_ERROR_EXIT
from retrain.scoped_credentials import ScopedCredentials
from retrain.stages import check_committed, uncommit
from retrain.storage import ObjectStore, parse_s3_uri
from retrain_airflow import settings as glue
from retrain_airflow.s3 import object_store, stage_credentials

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
    #: The stage's own S3 credentials while it runs (`scoped`); None: the connection's.
    scoped_credentials: ScopedCredentials | None = None
    #: Whether `launch` hands ``scoped_credentials`` to the trainer (else conf must leave them off).
    takes_scoped_credentials = True

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

    @contextmanager
    def scoped(self) -> Iterator[None]:
        """While the stage runs, ``scoped_credentials`` holds its own short-lived S3 credentials
        (conf ``s3.scoped_credentials: assume_role``; None when off), revoked afterwards."""
        settings = glue.settings()
        if settings.s3.scoped_credentials != "off" and not self.takes_scoped_credentials:
            raise AirflowFailException(
                f"s3.scoped_credentials: {settings.s3.scoped_credentials} is not supported by "
                f"{type(self).__name__}: its trainer would not receive the scoped credentials"
            )
        store, prefix = self._run_store()
        with stage_credentials(settings, store, prefix, self.stage, self.aws_conn_id) as creds:
            self.scoped_credentials = creds
            try:
                yield
            finally:
                self.scoped_credentials = None

    def execute(self, context: Any) -> str:
        self.clear_earlier_try()
        self.before_stage()
        with self.scoped():
            self.launch(context)
        self.after_stage()
        return self.run_uri

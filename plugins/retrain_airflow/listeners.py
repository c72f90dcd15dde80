"""DAG-run notes for ``ner_retrain``: one line with the run's outcome on the run page.

A task cannot set its own run's note in Airflow 3.3 (the execution API has no route for it), so a
listener does it where the state change happens (scheduler, or the `airflow dags test` process):
"promoted v7: micro F1 0.8120 (+0.0140 vs champion v6)", "kept champion v3: …",
"skipped: no new data", "failed at train: …". A listener must never break the scheduler: every error
is logged and swallowed.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

DAG_ID = "ner_retrain"
#: DAGs whose alias-moving task (promote, rollback) runs in the pool conf registry.alias_pool names.
POOLED_DAG_IDS = ("ner_retrain", "ner_rollback")


def missing_pool_message(pool: str) -> str:
    return (
        f"pool {pool!r} (conf registry.alias_pool) does not exist: Airflow will never schedule the "
        f"champion alias move (promote / rollback) of this run. Create it with one slot: "
        f"airflow pools set {pool} 1 'serialises champion alias moves'"
    )


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    """A run that needs the alias pool when it does not exist: an ERROR in the scheduler log and the
    reason as the run's note (Airflow itself only logs a warning and leaves the task scheduled)."""
    dag_id, run_id = getattr(dag_run, "dag_id", None), getattr(dag_run, "run_id", "?")
    if dag_id not in POOLED_DAG_IDS:
        return
    try:
        from retrain_airflow.tasks import settings

        pool = settings().registry.alias_pool
        if not _pool_exists(dag_run, pool):
            text = missing_pool_message(pool)
            log.error("%s %s: %s", dag_id, run_id, text)
            _set_note(dag_run, text)
    except Exception:  # never let a check break the scheduler
        log.exception("could not check the alias pool for %s", run_id)


def _pool_exists(dag_run: Any, pool: str) -> bool:
    """Read in the caller's session when the run belongs to one (the scheduler forbids a second
    committing session inside its loop), else in a session of its own."""
    from airflow.models.pool import Pool
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy import select

    query = select(Pool.pool).where(Pool.pool == pool)
    session = sa_inspect(dag_run).session
    if session is not None:
        return session.scalar(query) is not None
    from airflow.utils.session import create_session

    with create_session() as own:
        return own.scalar(query) is not None


def _summary(run_id: str) -> dict[str, Any] | None:
    from retrain import runs
    from retrain_airflow import settings as glue
    from retrain_airflow.s3 import listener_object_store

    s = glue.settings()
    store = listener_object_store(s)
    key = runs.RunFolder.for_run(s.s3.bucket, s.s3.runs_prefix, run_id).key(runs.SUMMARY)
    return store.get_json(key) if store.exists(key) else None


def _set_note(dag_run: Any, text: str) -> None:
    """Set the note on the DagRun the caller passed when it belongs to the caller's session (the
    scheduler's transaction commits it; a second committing session there would break its HA
    locks). A detached DagRun (``airflow dags test`` passes one) has no such transaction: then the
    note is written in a session of its own."""
    from sqlalchemy import inspect as sa_inspect

    if sa_inspect(dag_run).session is not None:
        dag_run.note = text[:1000]
        return
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    run_pk = sa_inspect(dag_run).identity[0]
    with create_session() as session:
        dr = session.get(DagRun, run_pk)
        if dr is not None:
            dr.note = text[:1000]


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    dag_id, run_id = getattr(dag_run, "dag_id", None), getattr(dag_run, "run_id", "?")
    if dag_id != DAG_ID:
        return
    try:
        from retrain_airflow.run_notes import run_note

        _set_note(dag_run, run_note(_summary(run_id)))
    except Exception:  # never let a note break the scheduler
        log.exception("could not set the note of %s", run_id)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    dag_id, run_id = getattr(dag_run, "dag_id", None), getattr(dag_run, "run_id", "?")
    if dag_id != DAG_ID:
        return
    try:
        from sqlalchemy import inspect as sa_inspect

        # in the scheduler, read through the caller's session: get_task_instances() without one opens
        # and commits a session of its own inside the scheduler's transaction, which raises
        # "UNEXPECTED COMMIT - THIS WILL BREAK HA LOCKS!" and leaves the DagRun detached, and the
        # scheduler then dies on it (seen with a failed asset-triggered run under the Celery stack)
        session = sa_inspect(dag_run).session
        kwargs = {"session": session} if session is not None else {}
        tis = dag_run.get_task_instances(state=["failed", "upstream_failed"], **kwargs)
        failed = sorted(ti.task_id for ti in tis)
        _set_note(
            dag_run, f"failed at {', '.join(failed) or 'unknown task'}: nothing promoted; see the task logs"
        )
    except Exception:
        log.exception("could not set the note of %s", run_id)

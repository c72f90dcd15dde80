"""A local stack for the demo and the end-to-end tests: moto S3 + Airflow (CLI subprocesses).

Everything binds to 127.0.0.1 and is stopped by its PID. Airflow's metadata DB is a database of
its own on the PostgreSQL server at $RETRAIN_PG_HOST:$RETRAIN_PG_PORT (127.0.0.1:5432 by default; as in
production), created and dropped here; or, where `metadata_database` finds no PostgreSQL, an embedded
SQLite file (``database`` given as a ``sqlite:////abs/path.db`` URL; the demo's fallback).
This module runs ``airflow`` and ``moto_server`` as programs; it never imports Airflow.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fernet_key() -> str:
    """A fresh Airflow Fernet key (32 random bytes, URL-safe base64), as `airflow` would generate."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def stop_by_pid(proc: subprocess.Popen[Any] | None, name: str, timeout: float = 10.0) -> None:
    """Stop a server this module started, by its PID: SIGTERM, then SIGKILL after ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) ignored SIGTERM for %.0fs: SIGKILL", name, proc.pid, timeout)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


#: The IAM calls `MotoServer._bootstrap_admin` makes before moto's checks start.
ADMIN_BOOTSTRAP = ("CreateUser", "PutUserPolicy", "CreateAccessKey")


class MotoServer:
    """``moto_server`` on 127.0.0.1 at a free port, as a child process stopped by its PID."""

    def __init__(self, bin_dir: str | Path | None = None, iam_checks: bool = False) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else Path(sys.executable).parent
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.access_key = "AKIA" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        # With IAM checks on, every request must be signed by a known identity and its policies must
        # allow it: `start` makes an admin user and takes its keys (access_key/secret_key).
        self.iam_checks = iam_checks

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.port = free_port()
        env = dict(os.environ)
        if self.iam_checks:  # moto checks requests after the first N: the 3 of `_bootstrap_admin`
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(len(ADMIN_BOOTSTRAP))
        self.proc = subprocess.Popen(
            [str(self.bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_for_port(self.port)
        if self.iam_checks:
            self._bootstrap_admin()
        log.info("moto S3 on %s (pid %d)", self.endpoint, self.proc.pid)
        return self

    def _bootstrap_admin(self) -> None:
        """An IAM user allowed everything, made by the requests moto lets through unchecked."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        everything = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.create_user(UserName="retrain-admin")
        iam.put_user_policy(UserName="retrain-admin", PolicyName="all", PolicyDocument=json.dumps(everything))
        key = iam.create_access_key(UserName="retrain-admin")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        stop_by_pid(self.proc, "moto S3", 10)
        self.proc = None

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def airflow_connection(self) -> str:
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key,
                "password": self.secret_key,
                "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            }
        )

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of ``service`` (s3, sqs, iam, sts, ...) with the server's own credentials."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def sqs_client(self) -> Any:
        return self.client("sqs")

    def notify_queue(self, bucket: str, prefix: str, queue: str, *, drain_test_event: bool = True) -> str:
        """Create the SQS queue ``queue`` and a notification on ``bucket``: object created and removed
        under ``prefix`` -> that queue (as on AWS; moto delivers the same JSON). S3 sends an
        ``s3:TestEvent`` when a notification is configured: drained here unless told otherwise.
        Returns the queue URL."""
        sqs = self.sqs_client()
        url = sqs.create_queue(QueueName=queue)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        rule = {"Name": "prefix", "Value": prefix}
        self.client().put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": [
                    {
                        "QueueArn": arn,
                        "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                        "Filter": {"Key": {"FilterRules": [rule]}},
                    }
                ]
            },
        )
        if drain_test_event:
            sqs.purge_queue(QueueUrl=url)
        return url

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pg() -> tuple[str, str, str]:
    """(host, port, user) of the PostgreSQL server the stacks use (trust auth on loopback)."""
    return (
        os.environ.get("RETRAIN_PG_HOST", "127.0.0.1"),
        os.environ.get("RETRAIN_PG_PORT", "5432"),
        os.environ.get("RETRAIN_PG_USER", "postgres"),
    )


def is_sqlite(database: str) -> bool:
    return database.startswith("sqlite:")


def postgres_reachable(timeout: float = 2.0) -> bool:
    """A PostgreSQL server accepts connections at $RETRAIN_PG_HOST:$RETRAIN_PG_PORT and `psql` is
    installed (the stacks create and drop databases with it)."""
    host, port, _ = _pg()
    if shutil.which("psql") is None:
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def metadata_database(name: str, sqlite_file: Path) -> tuple[str, str]:
    """The Airflow metadata DB for a run of the demo and a sentence saying which it is.

    PostgreSQL (a database ``name`` on the server) when one is configured ($RETRAIN_PG_HOST) or
    reachable at the default address; otherwise the embedded SQLite file ``sqlite_file``.
    $RETRAIN_DEMO_DB=sqlite|postgres forces the choice."""
    host, port, _ = _pg()
    forced = os.environ.get("RETRAIN_DEMO_DB", "").lower()
    if forced not in ("", "sqlite", "postgres"):
        raise ValueError(f"RETRAIN_DEMO_DB={forced!r}: expected 'sqlite' or 'postgres'")
    if forced == "postgres" or (
        forced != "sqlite" and ("RETRAIN_PG_HOST" in os.environ or postgres_reachable())
    ):
        return name, f"PostgreSQL at {host}:{port}, database {name}"
    why = (
        "as asked ($RETRAIN_DEMO_DB=sqlite)"
        if forced
        else "psql is not installed"
        if shutil.which("psql") is None
        else f"no PostgreSQL reachable at {host}:{port}"
    )
    return f"sqlite:///{sqlite_file.resolve()}", f"embedded SQLite {sqlite_file} ({why})"


def postgres_url(database: str) -> str:
    """The SQLAlchemy URL of ``database``: a PostgreSQL database name, or a ``sqlite:`` URL as it is."""
    if is_sqlite(database):
        return database
    host, port, user = _pg()
    return f"postgresql+psycopg2://{user}@{host}:{port}/{database}"


def _psql(database: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    host, port, user = _pg()
    return subprocess.run(
        ["psql", "-h", host, "-p", port, "-U", user, "-d", database, *args], text=True, **kw
    )


def recreate_database(database: str) -> None:
    """Drop and create a PostgreSQL database (trust auth on loopback, as on these machines); for a
    ``sqlite:`` URL, remove the file (`airflow db migrate` creates it)."""
    if is_sqlite(database):
        drop_database(database)
        return
    for sql in (f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', f'CREATE DATABASE "{database}"'):
        _psql("postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql, check=True, capture_output=True)


def drop_database(database: str) -> None:
    if is_sqlite(database):
        Path(database.removeprefix("sqlite:///")).unlink(missing_ok=True)
        return
    _psql("postgres", "-qc", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', capture_output=True)


# Migrated metadata databases to clone, alias pool name -> template database; None: every migrate()
# runs `airflow db migrate` (the demo, a single run). See `migrated_templates`.
_templates: dict[str, str] | None = None


@contextlib.contextmanager
def migrated_templates() -> Iterator[None]:
    """While active (the test session: tests/conftest.py), `AirflowEnv.migrate` on PostgreSQL runs
    `airflow db migrate` and `pools set` once, copies the result to a template database, and gives every
    later environment a clone of it (``CREATE DATABASE … TEMPLATE``: a file copy, 0.3 s, where the two
    CLI calls take ~60 s of CPU on the loaded 2-core machine; measured in README "Time on 2 cores").
    The clone is the same schema, default pool and alias pool the CLI would have written. The templates
    are dropped on exit."""
    global _templates
    outer, _templates = _templates, {}
    try:
        yield
    finally:
        made, _templates = _templates, outer
        for template in made.values():
            drop_database(template)


def _clone_database(template: str, database: str) -> None:
    for sql in (
        f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
        f'CREATE DATABASE "{database}" TEMPLATE "{template}"',
    ):
        _psql("postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql, check=True, capture_output=True)


class AirflowEnv:
    """An isolated AIRFLOW_HOME + metadata database (a PostgreSQL database name, or a ``sqlite:`` URL);
    runs ``airflow …`` commands with the project's dags/ and plugins/ and the retrain settings given
    as RETRAIN__* variables."""

    def __init__(
        self,
        home: str | Path,
        database: str,
        moto: MotoServer,
        retrain_env: dict[str, str],
        af_bin: str | Path | None = None,
    ) -> None:
        self.home = Path(home)
        self.database = database
        self.moto = moto
        self.af_bin = Path(af_bin) if af_bin else Path(sys.executable).parent
        self.retrain_env = retrain_env
        # One Fernet key per environment, given to every process. Without it each Airflow process
        # that starts before airflow.cfg exists generates its own (or reads a half-written file and
        # gets none): the dag-processor then encrypts asset-watcher trigger kwargs with one key and
        # the triggerer cannot read them (seen in CI: the triggerer died on a JSONDecodeError).
        self.fernet_key = fernet_key()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN__", "AWS_"))}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres_url(self.database),
                "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW_CONN_AWS_DEFAULT": self.moto.airflow_connection(),
                "PATH": f"{self.af_bin}:{env.get('PATH', '')}",
                "PYTHONPATH": str(REPO_ROOT / "plugins"),
            }
        )
        env.update(self.retrain_env)
        return env

    def run(
        self, *args: str, check: bool = True, log_file: Path | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.af_bin / "airflow"), *args]
        log.info("$ %s", " ".join(cmd))
        proc = subprocess.run(cmd, env=self.env(), text=True, capture_output=True, timeout=timeout)
        if log_file:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a", encoding="utf-8") as fh:
                fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(args)}` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def migrate(self) -> None:
        """A fresh metadata DB with Airflow's schema and the alias pool: `airflow db migrate` and
        `pools set`, or, inside `migrated_templates` on PostgreSQL, a clone of the first such DB."""
        self.home.mkdir(parents=True, exist_ok=True)
        if _templates is None or is_sqlite(self.database):
            recreate_database(self.database)
            self.run("db", "migrate")
            self.create_alias_pool()
            return
        pool = self.alias_pool_name()
        if pool in _templates:
            _clone_database(_templates[pool], self.database)
            return
        recreate_database(self.database)
        self.run("db", "migrate")
        self.create_alias_pool()
        template = f"retrain_tmpl_{secrets.token_hex(4)}"
        _clone_database(self.database, template)  # no one is connected to it yet: the CLI has exited
        _templates[pool] = template

    def alias_pool_name(self) -> str:
        from retrain.config import load_settings

        return load_settings(environ=self.env()).registry.alias_pool

    def create_alias_pool(self) -> str:
        """The one-slot pool that serialises champion alias moves (conf ``registry.alias_pool``), as the
        compose init service creates it."""
        name = self.alias_pool_name()
        self.run("pools", "set", name, "1", "one slot: serialises champion alias moves")
        return name

    def dags_test(
        self, dag_id: str, logical_date: str, conf: dict[str, Any] | None = None, log_file: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        args = ["dags", "test", dag_id, logical_date]
        if conf:
            args += ["--conf", json.dumps(conf)]
        return self.run(*args, check=False, log_file=log_file)

    def run_states(self, dag_id: str) -> list[dict[str, Any]]:
        return _json_list(self.run("dags", "list-runs", dag_id, "-o", "json").stdout)

    def query(self, sql: str, **params: str) -> list[list[str]]:
        """Rows of ``sql`` on the metadata DB (psql, or sqlite3 for SQLite); ``:'name'`` in ``sql`` is
        ``params[name]``, quoted by the client. Columns are tab-separated (psql), so a value must hold
        no tab or newline; every value comes back as a string."""
        if is_sqlite(self.database):
            path = self.database.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(path)) as db:
                rows = db.execute(re.sub(r":'(\w+)'", r":\1", sql), params).fetchall()
            return [["" if v is None else str(v) for v in row] for row in rows]
        args = [a for name, value in params.items() for a in ("-v", f"{name}={value}")]
        proc = _psql(
            self.database, "-tA", "-F", "\t", *args, input=sql + ";\n", capture_output=True, check=True
        )
        return [line.split("\t") for line in proc.stdout.splitlines() if line]

    def run_note(self, dag_id: str, run_id: str) -> str | None:
        """The DAG run's note, read from the metadata DB (the CLI does not show notes); None without one
        (or when the DB cannot be read)."""
        try:
            rows = self.query(
                "SELECT n.content FROM dag_run_note n JOIN dag_run r ON r.id = n.dag_run_id "
                "WHERE r.dag_id = :'dag' AND r.run_id = :'run'",
                dag=dag_id,
                run=run_id,
            )
        except (subprocess.CalledProcessError, sqlite3.Error):
            return None
        return rows[0][0] if rows else None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        rows = _json_list(self.run("tasks", "states-for-dag-run", dag_id, run_id, "-o", "json").stdout)
        return {r["task_id"]: r["state"] for r in rows}


def _json_list(output: str) -> list[dict[str, Any]]:
    """The JSON list in a CLI's stdout (log lines may come before it)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(output):
        if ch == "[" and (i == 0 or output[i - 1] == "\n"):
            try:
                value, _ = decoder.raw_decode(output[i:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, list):
                return value
    return []

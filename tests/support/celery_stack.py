"""Airflow with the CeleryExecutor on this machine: api-server, scheduler, dag-processor, Celery worker
and triggerer (which runs deferred tasks' triggers and the asset watchers of event-driven DAGs).

The production shape (docker-compose.yml) as plain processes, for the scheduler tests: Postgres metadata
DB (a database of its own), Redis broker (a database number and a queue of its own, so several stacks
can share one Redis), Celery results in Postgres, SimpleAuthManager with a generated password, and a REST
client that logs in with ``POST /auth/token``.

Everything binds to 127.0.0.1 or nothing: the API server gets ``AIRFLOW__API__HOST=127.0.0.1``; the
scheduler, the worker and the triggerer run with ``--skip-serve-logs`` because their log servers bind
every interface and cannot be told otherwise (``airflow.utils.serve_logs.core`` passes ``host=""`` to
uvicorn; only the port is configurable). All components share one AIRFLOW_HOME, so the API server reads
task logs from the log folder directly. ``listening_sockets()`` reports what the stack's processes
listen on.

Processes are started here and stopped by their PIDs (SIGTERM, then SIGKILL for whatever of the
recorded process tree is left). Like stack.py, this module runs ``airflow`` as a program and never
imports Airflow.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.stack import AirflowEnv, MotoServer, free_port, postgres_url, stop_by_pid

log = logging.getLogger(__name__)

SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
TERMINAL_STATES = ("success", "failed")


def redis_url(db: int) -> str:
    host = os.environ.get("RETRAIN_REDIS_HOST", "127.0.0.1")
    port = os.environ.get("RETRAIN_REDIS_PORT", "6379")
    return f"redis://{host}:{port}/{db}"


@dataclass
class Component:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # pid -> create time of every process seen in its tree (for the final cleanup; the create time
    # tells a reused PID from ours)
    tree: dict[int, float] = field(default_factory=dict)


class CeleryStack(AirflowEnv):
    """An :class:`AirflowEnv` whose DAG runs go through the CeleryExecutor, with its long-running
    components (api-server, scheduler, dag-processor, Celery worker, and a triggerer unless
    ``triggerer=False``) started as child processes on 127.0.0.1."""

    def __init__(
        self,
        home: str | Path,
        database: str,
        moto: MotoServer,
        retrain_env: dict[str, str],
        *,
        broker_db: int = 7,
        concurrency: int = 2,
        username: str = "admin",
        af_bin: str | Path | None = None,
        extra_pythonpath: list[str] | None = None,
        triggerer: bool = True,
    ) -> None:
        super().__init__(home, database, moto, retrain_env, af_bin=af_bin)
        self.with_triggerer = triggerer
        # Paths put before the environment's packages in every component (try a candidate pin without
        # rebuilding the environment); default: $RETRAIN_AIRFLOW_EXTRA_PYTHONPATH (os.pathsep-separated).
        if extra_pythonpath is None:
            extra_pythonpath = [
                p for p in os.environ.get("RETRAIN_AIRFLOW_EXTRA_PYTHONPATH", "").split(os.pathsep) if p
            ]
        self.extra_pythonpath = extra_pythonpath
        self.broker_db = broker_db
        self.concurrency = concurrency
        self.username = username
        self.password = secrets.token_urlsafe(18)
        token = secrets.token_hex(4)
        self.queue = f"retrain-{token}"
        self.celery_hostname = f"retrain-{token}@%h"
        self.api_port = 0
        self.log_server_port = 0
        self.trigger_log_port = 0
        self._jwt_secret = secrets.token_urlsafe(32)
        self._api_secret = secrets.token_urlsafe(32)
        self.components: dict[str, Component] = {}

    # -- configuration ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": redis_url(self.broker_db),
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+"
                + postgres_url(self.database).replace("+psycopg2", ""),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__BASE_URL": f"{self.base_url}/",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__API__SECRET_KEY": self._api_secret,
                # Not served (--skip-serve-logs), but never the shared default 8793/8794 either.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                # Task processes talk to the execution API of the one api-server worker: on a loaded
                # 2-core machine a call can take longer than the 5 s default, and a timed-out call
                # fails the task before it starts (seen at load average ~17).
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            }
        )
        if self.extra_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*self.extra_pythonpath, env.get("PYTHONPATH", "")])
        return env

    def preflight(self) -> None:
        """Fail fast, with the reason, when the CeleryExecutor cannot load in this environment (the
        components would otherwise die in their first second and leave only a log behind)."""
        code = (
            "import airflow.providers.celery.executors.celery_executor as m; "
            "import celery; print(celery.__version__)"
        )
        proc = subprocess.run(
            [str(self.af_bin / "python"), "-c", code],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(
                f"the CeleryExecutor does not import in {self.af_bin.parent}: {last}\n"
                "apache-airflow-providers-celery 3.26.0 imports celery.backends.database.retry, which celery "
                "5.7 removed: pin celery<5.7 (5.6.3 works with the rest of requirements/airflow.lock.txt)"
            )

    # -- processes --------------------------------------------------------------------------------
    def _component_specs(self) -> dict[str, list[str]]:
        specs = {
            "api-server": [
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--workers",
                "1",
            ],
            "scheduler": ["scheduler", "--skip-serve-logs"],
            "dag-processor": ["dag-processor"],
            "celery-worker": [
                "celery",
                "worker",
                "--skip-serve-logs",
                "--queues",
                self.queue,
                "--concurrency",
                str(self.concurrency),
                "--celery-hostname",
                self.celery_hostname,
                "--without-gossip",
                "--without-mingle",
            ],
        }
        if self.with_triggerer:
            specs["triggerer"] = ["triggerer", "--skip-serve-logs"]
        return specs

    def _spawn(self, comp: Component) -> None:
        assert comp.log_file is not None
        comp.log_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.env(), **comp.extra_env}
        with comp.log_file.open("ab") as out:
            comp.proc = subprocess.Popen(
                [str(self.af_bin / "airflow"), *comp.args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        log.info("started %s (pid %d), log %s", comp.name, comp.proc.pid, comp.log_file)

    def start(self, timeout: float = 600.0) -> CeleryStack:
        """Write the auth config, start the components, wait until the API reports them healthy and the
        worker reports ready. The metadata DB must exist (``migrate()``).

        ``timeout`` is a deadline, not a wait (the health is polled every second): 600 s, because on the
        shared 2-core machine five components can take minutes to start, more so while `make test`'s
        other lane runs (the api-server was not even listening after 180 s at load average 19-35)."""
        self.preflight()
        self.api_port = free_port()
        self.log_server_port = free_port()
        self.trigger_log_port = free_port()
        self.passwords_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({self.username: self.password}, fh)
        for name, args in self._component_specs().items():
            comp = Component(name, args, log_file=self.home / "logs" / f"{name}.log")
            self.components[name] = comp
            self._spawn(comp)
        deadline = time.monotonic() + timeout
        client = self.client()
        last: Any = None
        while True:
            self.check_alive()
            try:
                last = client.health()
                needed = ("metadatabase", "scheduler", "dag_processor")
                if self.with_triggerer:
                    needed += ("triggerer",)
                if all((last.get(k) or {}).get("status") == "healthy" for k in needed):
                    break
            except Exception as exc:  # not listening yet
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"Airflow at {self.base_url} not healthy after {timeout}s: {last}")
            time.sleep(1)
        self._wait_for_log("celery-worker", "ready.", deadline)
        return self

    def _wait_for_log(self, name: str, needle: str, deadline: float) -> None:
        comp = self.components[name]
        assert comp.log_file is not None
        while time.monotonic() < deadline:
            self.check_alive()
            if needle in comp.log_file.read_text(encoding="utf-8", errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{name} did not log {needle!r}; see {comp.log_file}")

    def check_alive(self) -> None:
        """Raise, with the end of its log, when a component has exited."""
        for comp in self.components.values():
            if comp.proc is not None and comp.proc.poll() is not None:
                tail = (
                    comp.log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
                    if comp.log_file
                    else ""
                )
                raise RuntimeError(f"{comp.name} exited with {comp.proc.returncode}:\n{tail}")

    def _drop_queue(self) -> None:
        """Delete this stack's Celery queue and its bindings from Redis (other stacks sharing the
        database keep theirs)."""
        try:
            import redis
        except ImportError:  # pragma: no cover - the Airflow env has it (celery[redis])
            return
        keys = [self.queue, f"_kombu.binding.{self.queue}", f"_kombu.binding_permanent.{self.queue}"]
        try:
            redis.Redis.from_url(redis_url(self.broker_db)).delete(*keys)
        except Exception as exc:  # cleanup only
            log.warning("could not delete Redis queue %s: %s", self.queue, exc)

    def _record_tree(self, comp: Component) -> None:
        import psutil

        if comp.proc is None:
            return
        try:
            root = psutil.Process(comp.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for proc in procs:
            try:
                comp.tree[proc.pid] = proc.create_time()
            except psutil.NoSuchProcess:
                continue

    def _stop_component(self, comp: Component, timeout: float = 30.0) -> None:
        import psutil

        if comp.proc is None:
            return
        self._record_tree(comp)
        stop_by_pid(comp.proc, comp.name, timeout)
        # children that outlived their parent (pool workers, task supervisors): by their recorded PIDs
        leftovers = []
        for pid, created in comp.tree.items():
            if pid == comp.proc.pid:
                continue
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    leftovers.append(p)
            except psutil.NoSuchProcess:
                continue
        for p in leftovers:
            p.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for p in alive:
            p.kill()
        comp.proc = None
        comp.tree = {}

    def stop(self) -> None:
        """Stop every component by PID: the Celery worker first (no task starts while the others go),
        then the other four at once, each in a thread of its own, so the wait is the slowest one's
        shutdown rather than their sum (an idle stack: 8.0 s one after another, 6.8 s so)."""
        from concurrent.futures import ThreadPoolExecutor

        worker = self.components.get("celery-worker")
        if worker is not None:
            self._stop_component(worker, timeout=45.0)
        rest = [
            self.components[name]
            for name in ("triggerer", "scheduler", "dag-processor", "api-server")
            if name in self.components
        ]
        with ThreadPoolExecutor(max_workers=max(1, len(rest))) as pool:
            list(pool.map(lambda comp: self._stop_component(comp, 30.0), rest))
        self._drop_queue()

    def restart(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        """Restart one component, optionally with extra environment (e.g. a RETRAIN__ override for the
        dag-processor, which re-serialises the DAGs with it)."""
        comp = self.components[name]
        self._stop_component(comp)
        comp.extra_env = dict(extra_env or {})
        self._spawn(comp)

    def snapshot_trees(self) -> None:
        """Record the current process trees (call while tasks run, so short-lived children are known)."""
        for comp in self.components.values():
            self._record_tree(comp)

    def listening_sockets(self) -> list[dict[str, Any]]:
        """Every TCP socket in LISTEN state owned by a process of this stack: component, pid, ip, port."""
        import psutil

        out = []
        for comp in self.components.values():
            if comp.proc is None or comp.proc.poll() is not None:
                continue
            try:
                root = psutil.Process(comp.proc.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in procs:
                try:
                    conns = p.net_connections(kind="tcp")
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                for c in conns:
                    if c.status == psutil.CONN_LISTEN:
                        out.append(
                            {"component": comp.name, "pid": p.pid, "ip": c.laddr.ip, "port": c.laddr.port}
                        )
        return out

    def client(self, timeout: float = 30.0) -> AirflowClient:
        return AirflowClient(self.base_url, self.username, self.password, timeout=timeout)

    def __enter__(self) -> CeleryStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AirflowAPIError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class AirflowClient:
    """The Airflow 3 REST API (``/api/v2``) with a SimpleAuthManager token from ``POST /auth/token``."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    def login(self) -> str:
        resp = self._http.post("/auth/token", json={"username": self.username, "password": self._password})
        if resp.status_code not in (200, 201):
            raise AirflowAPIError("POST", "/auth/token", resp.status_code, resp.text)
        self._token = resp.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A raw authenticated request (a 401 logs in again once); returns the httpx response."""
        if self._token is None:
            self.login()
        for attempt in (0, 1):
            resp = self._http.request(
                method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs
            )
            if resp.status_code == 401 and attempt == 0:
                self.login()
                continue
            return resp
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if resp.status_code >= 300:
            raise AirflowAPIError(method, path, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    # -- health and DAGs -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        resp = self._http.get("/api/v2/monitor/health")
        resp.raise_for_status()
        return resp.json()

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v2/dags/{dag_id}")

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Until the dag-processor has serialised ``dag_id``."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self.request("GET", f"/api/v2/dags/{dag_id}")
            if resp.status_code == 200:
                return resp.json()
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAG {dag_id} not parsed after {timeout}s (HTTP {resp.status_code})")
            time.sleep(1)

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return self._json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})

    def import_errors(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/v2/importErrors")["import_errors"]

    # -- runs -----------------------------------------------------------------------------------------
    def post_dag_run(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> Any:
        """``POST /dags/{dag_id}/dagRuns`` as is: the caller reads the status (4xx for invalid params)."""
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)

    def trigger(
        self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None
    ) -> dict[str, Any]:
        resp = self.post_dag_run(dag_id, conf, run_id)
        if resp.status_code >= 300:
            raise AirflowAPIError("POST", f"/api/v2/dags/{dag_id}/dagRuns", resp.status_code, resp.text)
        return resp.json()

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        data = self._json(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100}
        )
        return {ti["task_id"]: ti["state"] for ti in data["task_instances"]}

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """Task id -> the task instance as the API returns it (state, start_date, end_date, …)."""
        data = self._json(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100}
        )
        return {ti["task_id"]: ti for ti in data["task_instances"]}

    # -- assets ---------------------------------------------------------------------------------------
    def asset_by_name(self, name: str) -> dict[str, Any] | None:
        data = self._json("GET", "/api/v2/assets", params={"name_pattern": name, "limit": 100})
        return next((a for a in data["assets"] if a["name"] == name), None)

    def asset_events(self, asset_id: int) -> list[dict[str, Any]]:
        """Every event of one asset, oldest first (``extra`` included)."""
        data = self._json(
            "GET",
            "/api/v2/assets/events",
            params={"asset_id": asset_id, "limit": 100, "order_by": "timestamp"},
        )
        return data["asset_events"]

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float = 600.0, poll: float = 2.0
    ) -> dict[str, Any]:
        """Until the run is success or failed; returns the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout}s")
            time.sleep(poll)

    def wait_for_task_state(
        self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 600.0
    ) -> str:
        """Until ``task_id`` of the run is in one of ``states`` (fails early when the run ends)."""
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.task_states(dag_id, run_id).get(task_id)
                if state in states:
                    return state
                run = self.run(dag_id, run_id)
            except httpx.TimeoutException:  # an API server starved of CPU on a shared machine: ask again
                if time.monotonic() > deadline:
                    raise
                continue
            if run["state"] in TERMINAL_STATES or time.monotonic() > deadline:
                raise TimeoutError(
                    f"{dag_id} {run_id}: {task_id} is {state}, run {run['state']}: "
                    f"{self.task_states(dag_id, run_id)}"
                )
            time.sleep(2)

    # -- human in the loop (Airflow 3.3: /dags/{dag}/dagRuns/{run}/taskInstances/{task}/{map}/hitlDetails)
    def _hitl_path(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self._json("GET", self._hitl_path(dag_id, run_id, task_id))

    def respond(self, dag_id: str, run_id: str, task_id: str, options: list[str]) -> dict[str, Any]:
        """Answer a waiting human-in-the-loop task as this client's user."""
        return self._json("PATCH", self._hitl_path(dag_id, run_id, task_id), json={"chosen_options": options})

    def close(self) -> None:
        self._http.close()

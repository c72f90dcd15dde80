"""The Airflow UI for the end-to-end tests: ``airflow api-server`` on 127.0.0.1 and headless Chromium.

Used by tests/plugins/test_ui.py (the Retraining UI over seeded run reports) and
tests/e2e/test_ui_real_run.py (the same UI over the demo's real runs). Like stack.py, this module runs
``airflow`` as a program and never imports Airflow; selenium (Airflow environment only) is imported
where the browser is started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.stack import REPO_ROOT, AirflowEnv, free_port, stop_by_pid


def artifacts_dir() -> Path:
    """Where the tests leave what a person looks at afterwards (screenshots, server logs):
    ``$RETRAIN_TEST_ARTIFACTS``, else tests/artifacts (git-ignored)."""
    path = Path(os.environ.get("RETRAIN_TEST_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class ApiServer:
    """``airflow api-server`` of an :class:`AirflowEnv` on 127.0.0.1 at a free port, stopped by its PID.

    The metadata DB must exist. Users come from the environment's
    ``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS``; their generated passwords are in :meth:`passwords`."""

    def __init__(self, env: AirflowEnv, log_file: Path) -> None:
        self.env, self.log_file, self.port = env, log_file, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> ApiServer:
        import httpx

        env = {
            **self.env.env(),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
        }
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(self.env.af_bin / "airflow"),
                    "api-server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"api-server exited {self.proc.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"api-server not healthy after {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:]

    def passwords(self) -> dict[str, str]:
        """The SimpleAuthManager's generated passwords, by user name."""
        data: dict[str, str] = json.loads(
            (self.env.home / "simple_auth_manager_passwords.json.generated").read_text()
        )
        return data

    def token(self, username: str) -> str:
        """A JWT for the REST API (``POST /auth/token``)."""
        import httpx

        resp = httpx.post(
            f"{self.url}/auth/token",
            timeout=30,
            json={"username": username, "password": self.passwords()[username]},
        )
        if resp.status_code not in (200, 201):
            raise RuntimeError(
                f"POST /auth/token as {username} -> HTTP {resp.status_code}: {resp.text[:500]}"
            )
        return str(resp.json()["access_token"])

    def stop(self) -> None:
        stop_by_pid(self.proc, "airflow api-server", 30)
        self.proc = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chrome(window_size: str = "1500,1100", offline: bool = False) -> Any:
    """Headless Chromium through chromedriver (Debian's packages: scripts/install_test_tools.sh).

    ``offline``: the network is cut but for 127.0.0.1 (every other host name resolves to nothing), as
    on a machine without internet access: whatever a page would load from a CDN fails."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        raise RuntimeError("chromium/chromedriver missing: run scripts/install_test_tools.sh")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--window-size={window_size}",
    ):
        opts.add_argument(arg)
    if offline:
        opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


def login(browser: Any, server: ApiServer, username: str, timeout: float = 60.0) -> None:
    """Log in through Airflow's own login form, as a person does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, timeout)
    browser.get(f"{server.url}/auth/login")
    wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(server.passwords()[username])
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "/auth/login" not in b.current_url)

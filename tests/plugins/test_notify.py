"""Alerts (plugins/retrain_airflow/notify.py) against a real SMTP sink and a real HTTP sink on 127.0.0.1.

The SMTP sink speaks enough ESMTP for smtplib (EHLO, AUTH PLAIN, MAIL, RCPT, DATA); the HTTP sink is
http.server. Connections are given the way production gives them (AIRFLOW_CONN_* variables). Every
message is checked for the secrets of those connections; the last test runs a real DAG under
``airflow dags test`` whose failing tasks fire the on_failure_callback notifiers.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import socketserver
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SMTP_PASSWORD = "smtp-pw-7f3a9c1e55"
WEBHOOK_TOKEN = "hook-token-b41d0c9e2a"
WEBHOOK_PATH_SECRET = "T0001/B0002/pathsecret93kq"


# -- sinks ------------------------------------------------------------------------------------
class _SmtpHandler(socketserver.StreamRequestHandler):
    def _send(self, line: str) -> None:
        self.wfile.write((line + "\r\n").encode())

    def handle(self) -> None:
        sink: SmtpSink = self.server.sink  # type: ignore[attr-defined]
        self._send("220 sink ESMTP")
        mail: dict = {"rcpt": []}
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                self._send("250-sink")
                self._send("250-AUTH PLAIN")
                self._send("250 8BITMIME")
            elif verb == "HELO":
                self._send("250 sink")
            elif verb == "AUTH":
                parts = line.split()
                if len(parts) < 3:
                    self._send("334 ")
                    parts.append(self.rfile.readline().decode().strip())
                _, user, password = base64.b64decode(parts[2]).decode().split("\0")
                sink.logins.append((user, password))
                self._send("235 2.7.0 ok")
            elif verb == "MAIL":
                mail = {"from": line[10:], "rcpt": []}
                self._send("250 ok")
            elif verb == "RCPT":
                mail["rcpt"].append(line[8:])
                self._send("250 ok")
            elif verb == "DATA":
                self._send("354 go ahead")
                chunks = []
                while True:
                    data = self.rfile.readline()
                    if data in (b".\r\n", b".\n", b""):
                        break
                    chunks.append(data[1:] if data.startswith(b"..") else data)
                mail["raw"] = b"".join(chunks)
                sink.messages.append(mail)
                self._send("250 queued")
            elif verb == "QUIT":
                self._send("221 bye")
                return
            else:  # RSET, NOOP, …
                self._send("250 ok")


class SmtpSink:
    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.logins: list[tuple[str, str]] = []
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
        self.server.daemon_threads = True
        self.server.sink = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def parsed(self) -> list[dict]:
        out = []
        for m in self.messages:
            msg = email.message_from_bytes(m["raw"], policy=email.policy.default)
            body = "".join(
                part.get_content() for part in msg.walk() if part.get_content_type() == "text/html"
            )
            out.append(
                {
                    "subject": str(msg["Subject"]),
                    "to": str(msg["To"]),
                    "from": str(msg["From"]),
                    "html": body,
                    "raw": m["raw"].decode("utf-8", "replace"),
                }
            )
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpSink:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body.decode()}
                )
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def payloads(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture
def http_sink():
    sink = HttpSink()
    yield sink
    sink.close()


def _connections(smtp_port: int, http_port: int) -> dict[str, str]:
    return {
        "AIRFLOW_CONN_ALERTS_SMTP": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_port,
                "login": "alerts",
                "password": SMTP_PASSWORD,
                "extra": {
                    "from_email": "airflow@example.com",
                    "disable_ssl": True,
                    "disable_tls": True,
                    "timeout": 10,
                    "retry_limit": 0,
                },
            }
        ),
        "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps(
            {
                "conn_type": "http",
                "host": f"http://127.0.0.1:{http_port}/hooks/{WEBHOOK_PATH_SECRET}",
                "password": WEBHOOK_TOKEN,
                "extra": {"headers": {"X-Team": "ml-platform"}},
            }
        ),
    }


CHANNELS = [
    {"kind": "smtp", "conn_id": "alerts_smtp", "to": ["ml-oncall@example.com"]},
    {"kind": "webhook", "conn_id": "alerts_webhook"},
]


def _retrain_env(channels: list[dict], threshold: float | None = 0.1) -> dict[str, str]:
    return {
        "RETRAIN__S3__BUCKET": "alerts-test",
        "RETRAIN__ALERTS__CHANNELS": json.dumps(channels),
        "RETRAIN__ALERTS__QUARANTINE_THRESHOLD": "null" if threshold is None else str(threshold),
    }


@pytest.fixture
def wired(smtp_sink, http_sink, monkeypatch, tmp_path):
    """AIRFLOW_CONN_* for both sinks in this process; returns a settings factory."""
    from retrain.config import load_settings

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    for k, v in _connections(smtp_sink.port, http_sink.port).items():
        monkeypatch.setenv(k, v)

    def make(channels=CHANNELS, threshold=0.1):
        return load_settings(environ=_retrain_env(channels, threshold))

    return make


def _assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (SMTP_PASSWORD, WEBHOOK_TOKEN, WEBHOOK_PATH_SECRET):
            assert secret not in text, f"secret {secret[:6]}… leaked into: {text[:300]}"


SUMMARY = {
    "run_id": "scheduled__2026-11-28T02:00:00+00:00",
    "run_uri": "s3://alerts-test/runs/x",
    "dataset": {"version": "ds-9f00aa", "train": 200},
    "evaluation": {"candidate": {"micro_f1": 0.8123}, "champion": {"micro_f1": 0.7001}},
    "champion_name": "champion v2",
    "registered_version": "3",
    "decision": {"promote": True, "dry_run": False, "reason": "candidate beats champion v2 by +0.1122"},
    "registry": {
        "model": "clue-ner-Qwen2.5-7B-Instruct-lora",
        "tracking_uri": "http://mlflow:5000",
        "champion_version": "3",
    },
}


# -- promotion ----------------------------------------------------------------------------------
def test_promotion_reaches_both_channels_without_secrets(wired, smtp_sink, http_sink):
    from retrain_airflow.notify import notify_promotion

    sent = notify_promotion(wired(), SUMMARY)
    assert sent == ["smtp:alerts_smtp", "webhook:alerts_webhook"]

    [mail] = smtp_sink.parsed()
    assert "clue-ner-Qwen2.5-7B-Instruct-lora v3 is the new champion" in mail["subject"]
    assert "0.8123" in mail["subject"]
    assert mail["to"] == "ml-oncall@example.com" and mail["from"] == "airflow@example.com"
    assert "champion v2 0.7001" in mail["html"] and "ds-9f00aa" in mail["html"]
    assert smtp_sink.logins == [("alerts", SMTP_PASSWORD)]  # the password went to AUTH, not into the mail

    [req] = http_sink.requests
    assert req["path"] == f"/hooks/{WEBHOOK_PATH_SECRET}"
    assert req["headers"]["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert req["headers"]["X-Team"] == "ml-platform"
    body = json.loads(req["body"])
    assert body["event"] == "promotion" and body["version"] == "3" and body["micro_f1"] == 0.8123
    assert body["model"] == "clue-ner-Qwen2.5-7B-Instruct-lora" and body["dataset_version"] == "ds-9f00aa"
    assert "v3" in body["text"] and SUMMARY["run_id"] in body["text"]
    _assert_no_secrets(mail["raw"], mail["html"], mail["subject"], req["body"])


def test_kept_candidate_and_dry_run_send_nothing(wired, smtp_sink, http_sink):
    from retrain_airflow.notify import notify_promotion

    s = wired()
    kept = {**SUMMARY, "decision": {"promote": False, "dry_run": False, "reason": "kept"}}
    dry = {**SUMMARY, "decision": {"promote": True, "dry_run": True, "reason": "dry run"}}
    assert notify_promotion(s, kept) == [] and notify_promotion(s, dry) == []
    assert smtp_sink.messages == [] and http_sink.requests == []


def test_secrets_in_content_are_scrubbed(wired, smtp_sink, http_sink):
    """A reason that quotes a credential (e.g. an error message) goes out with *** in its place."""
    from retrain_airflow.notify import notify_promotion

    leaky = {
        **SUMMARY,
        "decision": {
            **SUMMARY["decision"],
            "reason": f"ok; token {WEBHOOK_TOKEN} pw {SMTP_PASSWORD} url {WEBHOOK_PATH_SECRET}",
        },
    }
    assert len(notify_promotion(wired(), leaky)) == 2
    [mail] = smtp_sink.parsed()
    [req] = http_sink.requests
    assert "token *** pw ***" in mail["html"] and "token *** pw ***" in json.loads(req["body"])["reason"]
    _assert_no_secrets(mail["raw"], req["body"])


# -- quarantine ---------------------------------------------------------------------------------
def test_quarantine_above_threshold_only(wired, smtp_sink, http_sink):
    from retrain_airflow.notify import notify_quarantine

    s = wired(threshold=0.1)
    below = {"read": 100, "accepted": 90, "quarantined": 10, "report_uri": "s3://alerts-test/reports/r1/"}
    above = {"read": 125, "accepted": 100, "quarantined": 25, "report_uri": "s3://alerts-test/reports/r2/"}
    assert notify_quarantine(s, below, run_id="r1") == []  # 10 % is not above 10 %
    assert notify_quarantine(s, {"read": 0, "accepted": 0, "quarantined": 0}, run_id="r0") == []
    assert smtp_sink.messages == [] and http_sink.requests == []

    assert notify_quarantine(s, above, run_id="r2") == ["smtp:alerts_smtp", "webhook:alerts_webhook"]
    [mail] = smtp_sink.parsed()
    assert "quarantined 25/125 records (20.0% > 10%) in run r2" in mail["subject"]
    assert "s3://alerts-test/reports/r2/" in mail["html"]
    [body] = http_sink.payloads()
    assert body["event"] == "quarantine" and body["quarantined"] == 25 and body["read"] == 125
    assert body["quarantined_share"] == 0.2 and body["report_uri"] == "s3://alerts-test/reports/r2/"
    _assert_no_secrets(mail["raw"], json.dumps(body))

    assert notify_quarantine(wired(threshold=None), above, run_id="r3") == []  # null = never
    assert len(http_sink.requests) == 1


def test_channels_filter_events_and_a_dead_channel_does_not_block_the_others(
    wired, smtp_sink, http_sink, monkeypatch
):
    from retrain_airflow.notify import failure_callbacks, notify_promotion

    only_failures = [CHANNELS[0], {**CHANNELS[1], "events": ["failure"]}]
    assert notify_promotion(wired(only_failures), SUMMARY) == ["smtp:alerts_smtp"]
    assert http_sink.requests == [] and len(smtp_sink.messages) == 1
    assert [type(n).__name__ for n in failure_callbacks(wired(only_failures))] == [
        "ScrubbedSmtpNotifier",
        "WebhookNotifier",
    ]
    assert failure_callbacks(wired([])) == []

    # the webhook endpoint is down: the mail still goes out, the task does not fail
    dead = json.loads(os.environ["AIRFLOW_CONN_ALERTS_WEBHOOK"])
    dead["host"] = "http://127.0.0.1:9/hooks/x"
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_WEBHOOK", json.dumps(dead))
    assert notify_promotion(wired(), SUMMARY) == ["smtp:alerts_smtp"]
    assert len(smtp_sink.messages) == 2


# -- failure callbacks under Airflow ------------------------------------------------------------------
ALERT_DAG = textwrap.dedent("""
    from airflow.sdk import DAG, BaseHook, task
    from retrain.config import load_settings
    from retrain_airflow.notify import failure_callbacks, notify_quarantine

    settings = load_settings()

    def boom():
        token = BaseHook.get_connection("alerts_webhook").password
        raise RuntimeError(f"trainer crashed talking to the endpoint with token {token}")

    def boom_again():
        raise ValueError("second failure: disk full")

    def quarantine():
        sent = notify_quarantine(settings, {"read": 50, "accepted": 30, "quarantined": 20,
                                            "report_uri": "s3://alerts-test/reports/q/"})
        assert sent == ["smtp:alerts_smtp", "webhook:alerts_webhook"], sent

    with DAG("alerts_probe", schedule=None, default_args={"retries": 0,
             "on_failure_callback": failure_callbacks(settings)}):
        task(task_id="boom")(boom)()
        task(task_id="boom_again")(boom_again)()
        task(task_id="quarantine")(quarantine)()
""")


def test_failure_callbacks_fire_from_a_real_dag_run(tmp_path, smtp_sink, http_sink):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "alerts_probe.py").write_text(ALERT_DAG)
    home = tmp_path / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RETRAIN__"))}
    env.update(_connections(smtp_sink.port, http_sink.port))
    env.update(_retrain_env(CHANNELS, 0.1))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/db.sqlite",
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "PYTHONPATH": str(REPO / "plugins"),
            "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080/",
        }
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.run(
        [airflow, "dags", "test", "alerts_probe", "2026-11-28T02:00:00+00:00"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert "boom" in log, log[-3000:]

    mails = smtp_sink.parsed()
    hooks = http_sink.payloads()
    hook_failures = sorted((h for h in hooks if h["event"] == "failure"), key=lambda h: h["task_id"])
    assert [(h["dag_id"], h["task_id"]) for h in hook_failures] == [
        ("alerts_probe", "boom"),
        ("alerts_probe", "boom_again"),
    ], log[-3000:]
    run_id = hook_failures[0]["run_id"]
    assert run_id.startswith("manual__") and hook_failures[1]["run_id"] == run_id
    assert hook_failures[0]["error"] == "trainer crashed talking to the endpoint with token ***"
    assert hook_failures[1]["error"] == "second failure: disk full"

    failures = sorted((m for m in mails if "failed" in m["subject"]), key=lambda m: m["subject"])
    assert [m["subject"] for m in failures] == [
        f"[retrain] alerts_probe.boom failed (run {run_id})",
        f"[retrain] alerts_probe.boom_again failed (run {run_id})",
    ]
    assert "trainer crashed talking to the endpoint with token ***" in failures[0]["html"]
    assert "second failure: disk full" in failures[1]["html"]
    assert "http://127.0.0.1:8080/dags/alerts_probe/runs/" in failures[0]["html"]  # the task log link

    # notify_quarantine inside a running task takes the run id from the task context
    [q] = [h for h in hooks if h["event"] == "quarantine"]
    assert q["run_id"] == run_id and q["quarantined"] == 20
    assert [m["subject"] for m in mails if "quarantined" in m["subject"]] == [
        f"[retrain] ner_retrain quarantined 20/50 records (40.0% > 10%) in run {run_id}"
    ]
    _assert_no_secrets(*(m["raw"] for m in mails), *(json.dumps(h) for h in hooks))

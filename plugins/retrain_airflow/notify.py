"""Alerts from ``ner_retrain``: a task failed, a run quarantined too much, a candidate was promoted.

Channels come from conf ``alerts.channels`` (see conf/pipeline.yaml). Each channel names an Airflow
connection and nothing else: the SMTP server, its login, the webhook URL and its token live in that
connection (``AIRFLOW_CONN_*`` or a secrets backend), never in conf or code.

- ``smtp``: Airflow's own :class:`SmtpNotifier` (apache-airflow-providers-smtp).
- ``webhook``: :class:`WebhookNotifier`, a JSON POST to the connection's URL (Slack/Mattermost/Teams
  style payloads carry a ``text`` field; the structured fields are there for anything else).

The DAG uses three functions:

- ``failure_callbacks(settings)``: notifiers for ``on_failure_callback`` (built at parse time; no
  connection is read until a task actually fails);
- ``notify_quarantine(settings, intake)`` and ``notify_promotion(settings, summary)``: called inside
  the tasks that know the numbers; they decide themselves whether an alert is due.

Every message is scrubbed before it leaves: the secrets of the channel connections, and everything
Airflow's secrets masker knows in this process (connection passwords fetched by the task, …), are
replaced by ``***``. Sending is best-effort: a channel that fails is logged and the others still send;
an alert never fails the pipeline task that raised it.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Iterable
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import BaseNotifier

from retrain.config import AlertEvent, Settings, SmtpAlertChannel, WebhookAlertChannel

log = logging.getLogger(__name__)

Channel = SmtpAlertChannel | WebhookAlertChannel

SUBJECT_PREFIX = "[retrain]"
MIN_SECRET_LEN = 4


# -- scrubbing --------------------------------------------------------------------------------
def _airflow_redact(value: Any) -> Any:
    """Airflow's secrets masker over ``value`` (passwords of connections fetched in this process)."""
    try:
        from airflow.sdk.log import redact
    except ImportError:  # pragma: no cover - the masker moved; our own scrubbing still applies
        return value
    return redact(value)


TOKEN_LIKE_LEN = 8


def _url_secrets(url: str) -> list[str]:
    """A webhook URL is a credential (Slack/Teams put the token in the path): the URL, its path, and
    every token-like path segment or query value."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    out = [url, parts.path, parts.query]
    out += [seg for seg in parts.path.split("/") if len(seg) >= TOKEN_LIKE_LEN]
    out += [v for _, v in parse_qsl(parts.query) if len(v) >= TOKEN_LIKE_LEN]
    return out


def _connection_secrets(conn: Any) -> list[str]:
    """The values of a connection that must never appear in a message."""
    out = [conn.password or ""]
    extra = conn.extra_dejson or {}
    out += [str(v) for v in (extra.get("headers") or {}).values()]
    if conn.conn_type in ("http", "https", "webhook") and conn.host:
        try:
            out += _url_secrets(webhook_url(conn))
        except ValueError:
            pass
    return [s for s in out if len(s) >= MIN_SECRET_LEN]


def _secrets_of(conn_ids: Iterable[str]) -> list[str]:
    """The secrets of every named connection that exists (all alert channels, not only the one sending:
    a message through one channel must not carry the credentials of another)."""
    from airflow.sdk import BaseHook

    out: list[str] = []
    for conn_id in dict.fromkeys(conn_ids):
        try:
            out += _connection_secrets(BaseHook.get_connection(conn_id))
        except Exception:  # a missing connection is reported by the channel that uses it
            continue
    return out


def scrub(value: Any, secrets: Iterable[str] = ()) -> Any:
    """``value`` (str, or dict/list of them) with every secret replaced by ``***``."""
    secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            for s in secrets:
                v = v.replace(s, "***")
            return v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return _airflow_redact(walk(value))


# -- notifiers --------------------------------------------------------------------------------
def webhook_url(conn: Any) -> str:
    """The URL of an HTTP connection: ``host`` when it is a full URL, else ``schema://host[:port]``,
    plus the extra ``endpoint`` path when set (the HttpHook conventions)."""
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(f"connection {conn.conn_id!r} has no host: put the webhook URL there")
    if "://" in host:
        url = host
    else:
        url = f"{conn.schema or 'https'}://{host}" + (f":{conn.port}" if conn.port else "")
    endpoint = (conn.extra_dejson or {}).get("endpoint")
    if endpoint:
        url = url.rstrip("/") + "/" + str(endpoint).lstrip("/")
    return url


class _RenderOnCopy:
    """Render and send from a shallow copy: Airflow renders template fields in place, and one notifier
    from ``default_args`` serves every task of the DAG (several in one process under ``dags test``)."""

    def __call__(self, *args: Any) -> None:
        import copy

        return super(_RenderOnCopy, copy.copy(self)).__call__(*args)  # type: ignore[misc]


class WebhookNotifier(_RenderOnCopy, BaseNotifier):
    """POST ``payload`` (templated) as JSON to the URL of the HTTP connection ``http_conn_id``.

    The connection's password, when set, is sent as ``Authorization: Bearer <password>``; extra
    ``{"headers": {...}}`` adds headers. The URL is never logged (webhook URLs often carry a token)."""

    template_fields = ("payload",)

    def __init__(
        self,
        *,
        http_conn_id: str,
        payload: dict[str, Any],
        timeout: float = 10.0,
        scrub_conn_ids: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.http_conn_id = http_conn_id
        self.payload = payload
        self.timeout = timeout
        self.scrub_conn_ids = [http_conn_id, *scrub_conn_ids]

    def notify(self, context: Any) -> None:
        import requests
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.http_conn_id)
        extra = conn.extra_dejson or {}
        headers = {
            "Content-Type": "application/json",
            **{str(k): str(v) for k, v in (extra.get("headers") or {}).items()},
        }
        if conn.password:
            headers["Authorization"] = f"Bearer {conn.password}"
        body = scrub(self.payload, _secrets_of(self.scrub_conn_ids))
        resp = requests.post(
            webhook_url(conn),
            data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            headers=headers,
            timeout=self.timeout,
        )
        if resp.status_code >= 300:
            raise RuntimeError(f"webhook connection {self.http_conn_id!r} answered HTTP {resp.status_code}")
        self.log.info(
            "alert %r posted to webhook connection %r (HTTP %d)",
            body.get("event"),
            self.http_conn_id,
            resp.status_code,
        )


class ScrubbedSmtpNotifier(_RenderOnCopy, SmtpNotifier):
    """Airflow's SmtpNotifier, with subject and body scrubbed of secrets after templating."""

    def __init__(self, *args: Any, scrub_conn_ids: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scrub_conn_ids = [self.smtp_conn_id, *scrub_conn_ids]

    def notify(self, context: Any) -> None:
        secrets = _secrets_of(self.scrub_conn_ids)
        self.subject = scrub(self.subject, secrets)
        self.html_content = scrub(self.html_content, secrets)
        super().notify(context)
        log.info("alert mailed to %s through connection %r", self.to, self.smtp_conn_id)


def _notifier(
    channel: Channel,
    *,
    subject: str,
    html_body: str,
    payload: dict[str, Any],
    scrub_conn_ids: Iterable[str] = (),
) -> BaseNotifier:
    if isinstance(channel, SmtpAlertChannel):
        return ScrubbedSmtpNotifier(
            to=list(channel.to),
            from_email=channel.from_email,
            smtp_conn_id=channel.conn_id,
            subject=subject,
            html_content=html_body,
            scrub_conn_ids=scrub_conn_ids,
        )
    return WebhookNotifier(
        http_conn_id=channel.conn_id,
        payload=payload,
        timeout=channel.timeout_seconds,
        scrub_conn_ids=scrub_conn_ids,
    )


def _all_conn_ids(settings: Settings) -> list[str]:
    return [c.conn_id for c in settings.alerts.channels]


def _channel_name(channel: Channel) -> str:
    return f"{channel.kind}:{channel.conn_id}"


# -- failure ----------------------------------------------------------------------------------
FAILURE_SUBJECT = SUBJECT_PREFIX + " {{ dag.dag_id }}.{{ ti.task_id }} failed (run {{ run_id }})"
FAILURE_TEXT = (
    "{{ dag.dag_id }}: task {{ ti.task_id }} failed after try {{ ti.try_number }} "
    "in run {{ run_id }}: {{ exception | string | truncate(500) }}"
)
FAILURE_HTML = (
    "<p><b>{{ dag.dag_id }}</b>: task <b>{{ ti.task_id }}</b> failed (try {{ ti.try_number }}).</p>"
    "<p>Run: {{ run_id }}<br>Error: {{ exception | string | truncate(500) | e }}</p>"
    '<p><a href="{{ ti.log_url }}">Task log</a></p>'
)


def failure_callbacks(settings: Settings) -> list[BaseNotifier]:
    """Notifiers for ``on_failure_callback`` (task level: sent once a task has no retry left).

    Build them at parse time; they read their connection only when a task fails."""
    out: list[BaseNotifier] = []
    for channel in settings.alerts.channels_for("failure"):
        payload = {
            "event": "failure",
            "text": FAILURE_TEXT,
            "dag_id": "{{ dag.dag_id }}",
            "task_id": "{{ ti.task_id }}",
            "run_id": "{{ run_id }}",
            "try_number": "{{ ti.try_number }}",
            "error": "{{ exception | string | truncate(500) }}",
            "log_url": "{{ ti.log_url }}",
        }
        out.append(
            _notifier(
                channel,
                subject=FAILURE_SUBJECT,
                html_body=FAILURE_HTML,
                payload=payload,
                scrub_conn_ids=_all_conn_ids(settings),
            )
        )
    return out


# -- quarantine and promotion (sent from inside a task) -------------------------------------------
def _current_context() -> dict[str, Any]:
    try:
        from airflow.sdk import get_current_context

        return dict(get_current_context())
    except Exception:  # outside a running task (CLI, tests): the messages need no context
        return {}


def _send(
    settings: Settings, event: AlertEvent, subject: str, text: str, html_body: str, fields: dict[str, Any]
) -> list[str]:
    """Send one alert to every channel subscribed to ``event``; return the channels that took it."""
    sent: list[str] = []
    context = _current_context()
    payload = {"event": event, "text": text, **fields}
    for channel in settings.alerts.channels_for(event):
        notifier = _notifier(
            channel,
            subject=subject,
            html_body=html_body,
            payload=payload,
            scrub_conn_ids=_all_conn_ids(settings),
        )
        try:
            notifier.notify(context)  # already rendered text: no Jinja over user data
        except Exception as exc:
            log.error("alert %r to %s failed: %s", event, _channel_name(channel), scrub(str(exc)))
            continue
        sent.append(_channel_name(channel))
    return sent


def quarantine_share(intake: dict[str, Any]) -> float:
    read = int(intake.get("read") or 0)
    return int(intake.get("quarantined") or 0) / read if read else 0.0


def notify_quarantine(settings: Settings, intake: dict[str, Any], *, run_id: str | None = None) -> list[str]:
    """Alert when the run quarantined more than ``alerts.quarantine_threshold`` of the records it read.

    ``intake`` is the ``validate_batches`` result (read, accepted, quarantined, report_uri). Returns the
    channels notified (empty when below the threshold or no channel listens)."""
    threshold = settings.alerts.quarantine_threshold
    share = quarantine_share(intake)
    if threshold is None or not intake.get("quarantined") or share <= threshold:
        return []
    run_id = run_id or str(_current_context().get("run_id", ""))
    read, quarantined = int(intake["read"]), int(intake["quarantined"])
    report = str(intake.get("report_uri") or "")
    subject = (
        f"{SUBJECT_PREFIX} ner_retrain quarantined {quarantined}/{read} records "
        f"({share:.1%} > {threshold:.0%}) in run {run_id}"
    )
    text = (
        f"ner_retrain run {run_id}: {quarantined} of {read} records quarantined ({share:.1%}, "
        f"threshold {threshold:.0%}); accepted {intake.get('accepted')}. Report: {report or 'none'}"
    )
    e = html.escape
    html_body = (
        f"<p>ner_retrain run <b>{e(run_id)}</b> quarantined <b>{quarantined}</b> of {read} records "
        f"({share:.1%}; threshold {threshold:.0%}).</p><p>Accepted: {e(str(intake.get('accepted')))}<br>"
        f"Validation report: {e(report or 'none')}</p>"
    )
    fields = {
        "run_id": run_id,
        "read": read,
        "accepted": intake.get("accepted"),
        "quarantined": quarantined,
        "quarantined_share": round(share, 4),
        "threshold": threshold,
        "report_uri": report,
    }
    return _send(settings, "quarantine", subject, text, html_body, fields)


def notify_promotion(settings: Settings, summary: dict[str, Any]) -> list[str]:
    """Alert when ``summary`` (the promote task's run summary) moved the champion alias.

    Nothing is sent for a kept candidate or a dry run. Returns the channels notified."""
    decision = summary.get("decision") or {}
    if not decision.get("promote") or decision.get("dry_run"):
        return []
    registry = summary.get("registry") or {}
    evaluation = summary.get("evaluation") or {}
    cand = (evaluation.get("candidate") or {}).get("micro_f1")
    champ = (evaluation.get("champion") or {}).get("micro_f1")
    version = summary.get("registered_version")
    model = registry.get("model", "")
    dataset = (summary.get("dataset") or {}).get("version", "")
    run_id = str(summary.get("run_id", ""))
    previous = summary.get("champion_name", "")
    f1 = f"{cand:.4f}" if isinstance(cand, (int, float)) else "?"
    old = f"{champ:.4f}" if isinstance(champ, (int, float)) else "?"
    subject = f"{SUBJECT_PREFIX} {model} v{version} is the new champion (micro F1 {f1})"
    text = (
        f"{model} v{version} promoted to champion by run {run_id}: micro F1 {f1} vs {previous} {old}; "
        f"dataset {dataset}. {decision.get('reason', '')}"
    )
    e = html.escape
    html_body = (
        f"<p><b>{e(model)} v{e(str(version))}</b> is the new champion.</p>"
        f"<p>Micro F1 {f1} against {e(previous)} {old}<br>Dataset version: {e(dataset)}<br>"
        f"Run: {e(run_id)}</p><p>Gate: {e(str(decision.get('reason', '')))}</p>"
    )
    fields = {
        "run_id": run_id,
        "model": model,
        "version": version,
        "micro_f1": cand,
        "previous": previous,
        "previous_micro_f1": champ,
        "dataset_version": dataset,
        "reason": decision.get("reason", ""),
    }
    return _send(settings, "promotion", subject, text, html_body, fields)

"""Secrets out of what the platform shows: one place that masks a URI before it is written to a
run summary, a registry description, an API response or a log line.

MLflow's tracking URI is the usual carrier (``postgresql://mlflow:PASSWORD@db/mlflow``, or an
``https://user:token@mlflow`` server); a query string can carry a token too
(``?password=…``, ``?token=…``).
"""

from __future__ import annotations

import re
from typing import Any

_USERINFO_PASSWORD = re.compile(r"(//[^/:@?#]*):[^/@?#]*@")
_SECRET_QUERY = re.compile(
    r"([?&](?:password|passwd|pwd|token|access_token|secret|api_key|apikey|key)=)[^&#]*", re.IGNORECASE
)


def mask_uri(uri: str | None) -> str:
    """``uri`` with the password of its user info and secret-looking query values replaced by ``***``
    (``postgresql://mlflow:***@db:5432/mlflow``); other URIs unchanged, None as ``""``."""
    out = _USERINFO_PASSWORD.sub(r"\1:***@", uri or "")
    return _SECRET_QUERY.sub(r"\1***", out)


def mask_text(text: str, uri: str | None) -> str:
    """``text`` (an error message, say) with every occurrence of ``uri`` masked, and any password
    left in a URI-looking part of it masked too."""
    if uri:
        text = text.replace(uri, mask_uri(uri))
    return _SECRET_QUERY.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", text))


def uri_secrets(uri: str | None) -> list[str]:
    """The secret parts of ``uri``: its user-info password and secret-looking query values (to hand
    to a log masker, which then hides them wherever they appear)."""
    found = [m.group(0)[len(m.group(1)) + 1 : -1] for m in _USERINFO_PASSWORD.finditer(uri or "")]
    found += [m.group(0)[len(m.group(1)) :] for m in _SECRET_QUERY.finditer(uri or "")]
    return [x for x in found if x]


def mask_summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run summary as the UI and its API show it: the registry's tracking URI masked, whatever
    version of the platform wrote it (summaries written before `mask_uri` held it in clear)."""
    registry = (summary or {}).get("registry")
    if isinstance(registry, dict) and isinstance(registry.get("tracking_uri"), str):
        summary = {
            **(summary or {}),
            "registry": {**registry, "tracking_uri": mask_uri(registry["tracking_uri"])},
        }
    return summary

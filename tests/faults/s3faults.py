"""Client-side S3 fault injection with botocore's own event hooks.

`S3Faults` registers a ``before-send.s3.*`` handler on a real boto3 client talking to the moto
server. A matching request never reaches the server: the handler answers it with an S3 error
response (500 InternalError, 503 SlowDown) or raises ConnectTimeoutError, exactly where botocore
would have sent it, so botocore's retry logic and error parsing run unchanged. Everything else
goes through to the real server.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


class _Raw:
    """The minimal urllib3-like body botocore reads from an AWSResponse."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *args: Any, **kwargs: Any):
        yield self._body


@dataclass
class Rule:
    operation: str  # botocore operation name (PutObject, GetObject, ListObjectsV2, HeadObject, ...) or "*"
    key_prefix: str = ""  # only requests whose object key starts with this (listings: the Prefix param)
    kind: str = "503"  # "500" | "503" | "timeout"
    times: int | None = None  # how many matching requests to fail; None: every one
    key_suffix: str = ""  # and ends with this
    failed: int = 0

    def matches(self, operation: str, key: str) -> bool:
        if self.operation not in ("*", operation) or not key.startswith(self.key_prefix):
            return False
        if not key.endswith(self.key_suffix):
            return False
        return self.times is None or self.failed < self.times


@dataclass
class S3Faults:
    """Fault rules on one client. ``log`` records every request seen: (operation, key, injected)."""

    client: Any
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.client.meta.events.register("before-send.s3.*", self._before_send)

    def fail(
        self,
        operation: str,
        key_prefix: str = "",
        kind: str = "503",
        times: int | None = None,
        key_suffix: str = "",
    ) -> Rule:
        rule = Rule(operation, key_prefix, kind, times, key_suffix)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def injected(self, operation: str | None = None) -> list[tuple[str, str, str]]:
        return [e for e in self.log if e[2] and (operation is None or e[0] == operation)]

    def _key(self, request: Any, operation: str) -> str:
        parts = urlsplit(request.url)
        path = unquote(parts.path).lstrip("/")
        key = path.partition("/")[2]  # path-style: /<bucket>/<key>
        if operation.startswith("List"):
            query = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
            key = unquote(query.get("prefix", ""))
        return key

    def _before_send(self, request: Any, event_name: str = "", **kwargs: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.exceptions import ConnectTimeoutError

        operation = event_name.rsplit(".", 1)[-1]
        key = self._key(request, operation)
        with self._lock:
            rule = next((r for r in self.rules if r.matches(operation, key)), None)
            if rule is not None:
                rule.failed += 1
            self.log.append((operation, key, rule.kind if rule else ""))
        if rule is None:
            return None
        if rule.kind == "timeout":
            raise ConnectTimeoutError(endpoint_url=request.url)
        status, code, message = ERRORS[rule.kind]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>fault-injected</RequestId></Error>"
        ).encode()
        if request.method == "HEAD":
            body = b""
        return AWSResponse(
            request.url,
            status,
            {"Content-Type": "application/xml", "x-amz-request-id": "fault-injected"},
            _Raw(body),
        )


def retrying_client(endpoint: str, access_key: str, secret_key: str, max_attempts: int = 3) -> Any:
    """A boto3 S3 client like production's, with botocore's standard retry mode and short timeouts."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=2,
            read_timeout=20,
        ),
    )

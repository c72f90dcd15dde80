"""A Docker API proxy that lets the Airflow worker do what the docker launcher needs, and nothing else.

The worker used to mount the host's Docker socket: any task code could start a privileged container
with ``/`` mounted and own the host. This proxy owns the socket instead; the worker reaches it over
TCP on a compose-internal network (``DOCKER_HOST=tcp://socket-proxy:2375``). Filtering by API path
alone is not enough (``POST /containers/create`` is what the launcher needs, and it is also what
creates a privileged container), so the body of every container-create request is checked:

- the image is one of ``DOCKER_PROXY_ALLOWED_IMAGES`` (exact references, e.g. the trainer image);
- the container carries the label ``DOCKER_PROXY_REQUIRED_LABEL`` (the launcher's ``org.retrain.stage``);
  every later call on a container (start, attach, wait, logs, inspect, stop, kill, remove) is allowed
  only for a container that carries it, so the worker cannot touch the proxy, the database or any
  other container on the host;
- no ``Privileged``, no ``CapAdd``, no ``SecurityOpt`` other than ``no-new-privileges`` (no
  ``seccomp=unconfined``, ``apparmor=unconfined``, ``label=disable``), no unmasked ``/proc`` paths;
- no host network, PID, IPC, UTS, user or cgroup namespace, nor another container's; the network is
  one of ``DOCKER_PROXY_ALLOWED_NETWORKS``;
- no ``Devices`` or device cgroup rules; ``DeviceRequests`` only for GPUs (driver nvidia or empty);
- bind mounts (``Mounts`` and ``Binds``) only of exactly the directories in
  ``DOCKER_PROXY_ALLOWED_BIND_SOURCES`` (the model cache, the scratch dir), not of paths under them: a
  trainer writes into the model cache, and a symlink it leaves there (``/models/x -> /``) would be
  followed by the engine when a later bind names ``<cache>/x``; no named volumes (a ``local`` volume
  can bind any host path), no ``VolumesFrom`` (another container's mounts), no published ports, no
  restart policy, no other runtime or log driver, not user root unless ``DOCKER_PROXY_ALLOW_ROOT_USER=1``;
- any other ``HostConfig`` key that the proxy does not know is refused when it is set (a newer API
  field cannot slip through unchecked).

Allowed endpoints (with or without the ``/v1.NN`` prefix): ``/_ping``, ``GET /version``, image list and
inspect, pulling an allowed image, container list, create (checked), and on labelled containers:
inspect, start, attach, wait, logs, stop, kill, remove. Everything else (exec, archive, build, commit,
networks, volumes, system, swarm, plugins, events) gets 403 with the reason, as JSON ``{"message": …}``,
which docker-py raises as ``APIError`` and the docker CLI prints as "Error response from daemon".

Request bodies are never logged (the create body holds the trainer's S3 credentials); each request is
logged as method, path and the decision.

Python standard library only, one file: it runs in a small image (docker/socket-proxy/Dockerfile) or
as ``python3 docker_socket_proxy.py``; ``--healthcheck`` exits 0 when the proxy and the engine behind it
answer ``/_ping``. Settings (environment):

  DOCKER_PROXY_LISTEN              tcp://HOST:PORT or unix:///path (default tcp://127.0.0.1:2375: only this
                                   machine; compose sets tcp://socket-proxy:2375, the container's own
                                   address on its internal network, and no other interface)
  DOCKER_PROXY_UPSTREAM            the real engine (default unix:///var/run/docker.sock)
  DOCKER_PROXY_ALLOWED_IMAGES      comma-separated image references a container may run (required: no
                                   default, the proxy does not start without one)
  DOCKER_PROXY_ALLOWED_NETWORKS    comma-separated network modes/names (default "none"; "host" only if
                                   listed, "default" means the engine's default bridge)
  DOCKER_PROXY_ALLOWED_BIND_SOURCES comma-separated host directories that may be bind-mounted, each
                                   exactly (default empty: no bind mounts)
  DOCKER_PROXY_REQUIRED_LABEL      the label every managed container carries (default org.retrain.stage)
  DOCKER_PROXY_ALLOW_GPUS          1/0: GPU device requests allowed (default 1; the trainer needs them)
  DOCKER_PROXY_ALLOW_ROOT_USER     1/0: a container may run as uid 0 (default 0; the trainer is uid 1000)
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import posixpath
import re
import selectors
import signal
import socket
import socketserver
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

log = logging.getLogger("docker-socket-proxy")

MAX_HEAD = 64 * 1024  # request line + headers
MAX_BODY = 4 * 1024 * 1024  # a create request is a few KiB; nothing allowed sends more
PREFIX = "docker-socket-proxy: "

# ------------------------------------------------------------------------------------------ policy


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Policy:
    """What a container-create request may ask for (see the module docstring for each setting)."""

    allowed_images: tuple[str, ...]
    allowed_networks: tuple[str, ...] = ("none",)
    allowed_bind_sources: tuple[str, ...] = ()
    required_label: str = "org.retrain.stage"
    allow_gpus: bool = True
    allow_root_user: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Policy:
        images = _csv(environ.get("DOCKER_PROXY_ALLOWED_IMAGES"))
        if not images:
            raise ValueError("DOCKER_PROXY_ALLOWED_IMAGES is empty: name the image(s) containers may run")
        sources = tuple(posixpath.normpath(p) for p in _csv(environ.get("DOCKER_PROXY_ALLOWED_BIND_SOURCES")))
        relative = [p for p in sources if not p.startswith("/")]
        if relative:
            raise ValueError(f"DOCKER_PROXY_ALLOWED_BIND_SOURCES must be absolute paths: {relative}")
        if "/" in sources:
            raise ValueError("DOCKER_PROXY_ALLOWED_BIND_SOURCES may not contain / (the whole host)")
        return cls(
            allowed_images=images,
            allowed_networks=_csv(environ.get("DOCKER_PROXY_ALLOWED_NETWORKS", "none")) or ("none",),
            allowed_bind_sources=sources,
            required_label=environ.get("DOCKER_PROXY_REQUIRED_LABEL", "").strip() or "org.retrain.stage",
            allow_gpus=_flag(environ.get("DOCKER_PROXY_ALLOW_GPUS"), True),
            allow_root_user=_flag(environ.get("DOCKER_PROXY_ALLOW_ROOT_USER"), False),
        )

    def bind_source_allowed(self, source: str) -> bool:
        """``source`` is one of the allowed directories (``..`` and a trailing / resolved first).

        Exactly, not a path under one: what lies under the model cache is written by trainers, and a
        symlink there would be followed by the engine."""
        if not source.startswith("/"):
            return False
        return posixpath.normpath(source) in self.allowed_bind_sources


# HostConfig keys the checks below look at, and keys that may hold any value (resource limits, DNS,
# logging options, ...). A key in neither set is refused when set to anything but its zero value.
CHECKED_HOST_KEYS = {
    "Privileged",
    "CapAdd",
    "SecurityOpt",
    "MaskedPaths",
    "ReadonlyPaths",
    "NetworkMode",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "CgroupnsMode",
    "Cgroup",
    "CgroupParent",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "Mounts",
    "Binds",
    "VolumesFrom",
    "VolumeDriver",
    "PortBindings",
    "PublishAllPorts",
    "RestartPolicy",
    "Runtime",
    "LogConfig",
    "Links",
    "Sysctls",
}
FREE_HOST_KEYS = {
    "AutoRemove",
    "CapDrop",
    "ConsoleSize",
    "ContainerIDFile",
    "CpuCount",
    "CpuPercent",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpuShares",
    "CpusetCpus",
    "CpusetMems",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "Init",
    "Isolation",
    "KernelMemory",
    "KernelMemoryTCP",
    "Memory",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "NanoCpus",
    "OomKillDisable",
    "OomScoreAdj",
    "PidsLimit",
    "ReadonlyRootfs",
    "ShmSize",
    "StorageOpt",
    "Tmpfs",
    "Ulimits",
    "IOMaximumBandwidth",
    "IOMaximumIOps",
}
SAFE_SECURITY_OPTS = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
SHARED_NAMESPACE_KEYS = ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode", "Cgroup")
SAFE_NAMESPACE_VALUES = {"", "private", "shareable", "none"}  # IpcMode's own; "host"/"container:x" refused
SAFE_LOG_DRIVERS = {"", "json-file", "local"}
SAFE_RUNTIMES = {"", "runc", "nvidia"}


def _is_set(value: Any) -> bool:
    """Docker's zero values (false, 0, "", [], {}, null) mean "not asked for"."""
    return value not in (None, False, 0, "", [], {})


def _check_image_and_config(body: Mapping[str, Any], policy: Policy) -> list[str]:
    problems = []
    image = body.get("Image")
    if image not in policy.allowed_images:
        problems.append(f"image {image!r} is not allowed (allowed: {', '.join(policy.allowed_images)})")
    labels = body.get("Labels") or {}
    if policy.required_label not in labels:
        problems.append(f"the container must carry the label {policy.required_label!r}")
    user = str(body.get("User") or "")
    if user.split(":")[0] in ("0", "root") and not policy.allow_root_user:
        problems.append(f"user {user!r}: containers may not run as root")
    return problems


def _check_privileges(host: Mapping[str, Any]) -> list[str]:
    problems = []
    if _is_set(host.get("Privileged")):
        problems.append("Privileged is not allowed")
    if _is_set(host.get("CapAdd")):
        problems.append(f"CapAdd {host['CapAdd']} is not allowed (capabilities may only be dropped)")
    bad_opts = [o for o in host.get("SecurityOpt") or [] if str(o).strip() not in SAFE_SECURITY_OPTS]
    if bad_opts:
        problems.append(f"SecurityOpt {bad_opts} is not allowed (only no-new-privileges)")
    for key in ("MaskedPaths", "ReadonlyPaths"):
        if host.get(key) is not None:
            problems.append(f"{key} may not be set (it unmasks /proc and /sys paths)")
    if _is_set(host.get("Sysctls")):
        problems.append("Sysctls are not allowed")
    if _is_set(host.get("CgroupParent")):
        problems.append("CgroupParent is not allowed")
    if str(host.get("Runtime") or "") not in SAFE_RUNTIMES:
        problems.append(f"runtime {host.get('Runtime')!r} is not allowed")
    return problems


def _check_namespaces(body: Mapping[str, Any], host: Mapping[str, Any], policy: Policy) -> list[str]:
    problems = []
    for key in SHARED_NAMESPACE_KEYS:
        value = str(host.get(key) or "")
        if value not in SAFE_NAMESPACE_VALUES:
            problems.append(f"{key} {value!r} is not allowed (no host or other container's namespace)")
    network = str(host.get("NetworkMode") or "default")
    network = "default" if network == "bridge" else network
    if network.startswith("container:") or network not in policy.allowed_networks:
        problems.append(f"network {network!r} is not allowed (allowed: {', '.join(policy.allowed_networks)})")
    endpoints = ((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}).keys()
    others = sorted(n for n in endpoints if n not in policy.allowed_networks)
    if others:
        problems.append(f"networks {others} are not allowed")
    if _is_set(host.get("PortBindings")) or _is_set(host.get("PublishAllPorts")):
        problems.append("published ports are not allowed")
    if _is_set(host.get("Links")):
        problems.append("Links are not allowed")
    return problems


def _check_devices(host: Mapping[str, Any], policy: Policy) -> list[str]:
    problems = []
    if _is_set(host.get("Devices")):
        problems.append("Devices are not allowed (GPUs come as DeviceRequests)")
    if _is_set(host.get("DeviceCgroupRules")):
        problems.append("DeviceCgroupRules are not allowed")
    for request in host.get("DeviceRequests") or []:
        caps = {c for group in request.get("Capabilities") or [] for c in group}
        driver = request.get("Driver") or ""
        if not policy.allow_gpus or "gpu" not in caps or driver not in ("", "nvidia"):
            problems.append(f"device request {request} is not allowed (only GPU requests)")
    return problems


def _check_mounts(host: Mapping[str, Any], policy: Policy) -> list[str]:
    problems = []
    for mount in host.get("Mounts") or []:
        kind, source = mount.get("Type") or "volume", str(mount.get("Source") or "")
        if kind == "bind":
            if not policy.bind_source_allowed(source):
                problems.append(f"bind mount of host path {source!r} is not allowed")
        elif kind == "tmpfs":
            continue
        else:
            problems.append(f"{kind} mount {source!r} is not allowed (only binds of allowed paths, tmpfs)")
    for bind in host.get("Binds") or []:
        source = str(bind).split(":", 1)[0]
        if not policy.bind_source_allowed(source):
            problems.append(f"bind {source!r} is not allowed")
    if _is_set(host.get("VolumesFrom")):
        problems.append("VolumesFrom is not allowed (it mounts another container's volumes)")
    if _is_set(host.get("VolumeDriver")):
        problems.append("VolumeDriver is not allowed")
    return problems


def _check_misc(host: Mapping[str, Any]) -> list[str]:
    problems = []
    restart = (host.get("RestartPolicy") or {}).get("Name") or ""
    if restart not in ("", "no"):
        problems.append(f"restart policy {restart!r} is not allowed (a task's container ends with it)")
    driver = (host.get("LogConfig") or {}).get("Type") or ""
    if driver not in SAFE_LOG_DRIVERS:
        problems.append(f"log driver {driver!r} is not allowed")
    unknown = sorted(k for k, v in host.items() if k not in CHECKED_HOST_KEYS | FREE_HOST_KEYS and _is_set(v))
    if unknown:
        problems.append(f"HostConfig fields {unknown} are not allowed (unknown to the proxy)")
    return problems


# Every field name the checks read. The engine decodes JSON with Go's encoding/json: field names match
# case-insensitively (with Unicode folding: "ſ" is "s") and a repeated object is merged into the
# first. So a body is refused when a key is another spelling of one of these, or when an object repeats
# a key (``{"HostConfig": {"Privileged": true}, "HostConfig": {}}`` is privileged for the engine).
CANONICAL_NAMES = {
    *CHECKED_HOST_KEYS,
    *FREE_HOST_KEYS,
    *("Image", "Labels", "User", "HostConfig", "NetworkingConfig", "EndpointsConfig"),
    *("Type", "Source", "Target", "ReadOnly", "BindOptions", "VolumeOptions", "TmpfsOptions"),
    *("Driver", "Count", "DeviceIDs", "Capabilities", "Options", "Name", "MaximumRetryCount", "Config"),
}
_FOLDED = {name.casefold(): name for name in CANONICAL_NAMES}


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        folded = key.casefold()
        if folded in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen.add(folded)
        canonical = _FOLDED.get(folded)
        if canonical is not None and key != canonical:
            raise ValueError(f"the key {key!r} must be spelt {canonical!r}")
    return dict(pairs)


def parse_body(data: bytes) -> Any:
    """The JSON body as the checks may read it; ValueError when the engine could read it differently."""
    return json.loads(data or b"null", object_pairs_hook=_strict_object)


def check_create(body: Any, policy: Policy) -> list[str]:
    """Why a ``POST /containers/create`` body is refused; an empty list means it is allowed."""
    if not isinstance(body, dict):
        return ["the request body is not a JSON object"]
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        return ["HostConfig is not a JSON object"]
    return [
        *_check_image_and_config(body, policy),
        *_check_privileges(host),
        *_check_namespaces(body, host, policy),
        *_check_devices(host, policy),
        *_check_mounts(host, policy),
        *_check_misc(host),
    ]


# ------------------------------------------------------------------------------------------ routes

_VERSION = re.compile(r"^/v(?P<major>\d+)(?:\.(?P<minor>\d+))?(?=/)")
# API 1.24 (Docker 1.12) and later: before it, a start request could carry a HostConfig of its own
# (Docker 20.10 still applies it), which would bypass the create check.
MIN_API = (1, 24)
_CONTAINER = re.compile(r"^/containers/(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:/(?P<op>[a-z]+))?$")
_IMAGE_INSPECT = re.compile(r"^/images/(?P<name>.+)/json$")
# (method, operation) on an existing, labelled container; operation "" is DELETE /containers/{id}
CONTAINER_OPS = {
    ("GET", "json"),
    ("POST", "start"),
    ("POST", "attach"),
    ("POST", "wait"),
    ("GET", "logs"),
    ("POST", "stop"),
    ("POST", "kill"),
    ("DELETE", ""),
}


@dataclass
class Route:
    """What to do with a request: forward it, forward it if ``container`` carries the label, or refuse."""

    allowed: bool
    reason: str = ""
    container: str | None = None
    problems: list[str] = field(default_factory=list)


def route(method: str, target: str, body: bytes, policy: Policy) -> Route:
    """The decision for one request, before anything reaches the engine."""
    if "#" in target:  # no client sends one; the engine would keep it in the path
        return Route(False, "a request target with '#' is not allowed")
    target_path, _, query = target.partition("?")  # not urlsplit: "//x/y" would lose "x" as a host
    raw_path = unquote(target_path)
    version = _VERSION.match(raw_path)
    if version and (int(version["major"]), int(version["minor"] or 0)) < MIN_API:
        return Route(False, f"API versions before {MIN_API[0]}.{MIN_API[1]} are not allowed")
    path = _VERSION.sub("", raw_path)
    if not path.startswith("/") or path != posixpath.normpath(path) or "//" in path:
        return Route(False, f"the path {path!r} is not in normal form")
    if body and not (method == "POST" and path == "/containers/create"):
        return Route(False, f"{method} {path} may not carry a body (only container create does)")
    if path == "/_ping" and method in ("GET", "HEAD"):
        return Route(True)
    if method == "GET" and path in ("/version", "/images/json", "/containers/json"):
        return Route(True)
    if method == "GET" and _IMAGE_INSPECT.match(path):
        return Route(True)
    if method == "POST" and path == "/images/create":
        params = parse_qs(query)
        image, tag = params.get("fromImage", [""])[0], params.get("tag", [""])[0]
        ref = f"{image}:{tag}" if tag else image
        if ref in policy.allowed_images or (image in policy.allowed_images and not tag):
            return Route(True)
        return Route(False, f"pulling {ref!r} is not allowed (only {', '.join(policy.allowed_images)})")
    if method == "POST" and path == "/containers/create":
        try:
            problems = check_create(parse_body(body), policy)
        except ValueError as exc:
            problems = [f"the request body is not accepted: {exc}"]
        return Route(not problems, "; ".join(problems), problems=problems)
    m = _CONTAINER.match(path)
    if m and m.group("id") not in ("create", "json") and (method, m.group("op") or "") in CONTAINER_OPS:
        return Route(True, container=m.group("id"))
    return Route(False, f"{method} {path} is not an endpoint the launcher needs")


# ------------------------------------------------------------------------------------------ plumbing


def connect(address: str) -> socket.socket:
    """A connected socket to ``unix:///path`` or ``tcp://host:port``."""
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address[len("unix://") :] or "/var/run/docker.sock")
        return sock
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return socket.create_connection((host or "127.0.0.1", int(port)))


class _UpstreamHTTP(http.client.HTTPConnection):
    def __init__(self, address: str) -> None:
        super().__init__("localhost", timeout=30)
        self._address = address

    def connect(self) -> None:
        self.sock = connect(self._address)
        self.sock.settimeout(30)


def container_labels(upstream: str, container: str) -> dict[str, str] | None:
    """The container's labels from the engine, or None when it does not exist."""
    conn = _UpstreamHTTP(upstream)
    try:
        conn.request("GET", f"/containers/{container}/json")
        resp = conn.getresponse()
        data = resp.read()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise OSError(f"inspecting container {container}: HTTP {resp.status}")
        return dict((json.loads(data).get("Config") or {}).get("Labels") or {})
    finally:
        conn.close()


class BadRequest(Exception):
    pass


def read_request(reader: Any) -> tuple[str, str, list[tuple[str, str]], bytes]:
    """Method, target, headers and the whole (de-chunked) body of one HTTP/1.1 request."""
    line = reader.readline(MAX_HEAD)
    if not line:
        raise EOFError
    try:
        method, target, _version = line.decode("latin-1").split()
    except ValueError:
        raise BadRequest("malformed request line") from None
    headers: list[tuple[str, str]] = []
    size = len(line)
    while True:
        raw = reader.readline(MAX_HEAD)
        size += len(raw)
        if size > MAX_HEAD or not raw:
            raise BadRequest("request head too large or truncated")
        if raw in (b"\r\n", b"\n"):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return method, target, headers, _read_body(reader, headers)


def _read_body(reader: Any, headers: list[tuple[str, str]]) -> bytes:
    lower = {k.lower(): v for k, v in headers}
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(reader.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.readline(MAX_HEAD) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return body
            body += reader.read(size)
            reader.readline(16)
            if len(body) > MAX_BODY:
                raise BadRequest("request body too large")
    length = int(lower.get("content-length") or 0)
    if length < 0:
        raise BadRequest("negative Content-Length")
    if length > MAX_BODY:
        raise BadRequest("request body too large")
    return reader.read(length) if length else b""


HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "proxy-connection",
}


def upstream_request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[bytes, bool]:
    """The request as sent to the engine (one request per connection), and whether it is an upgrade."""
    lower = {k.lower(): v for k, v in headers}
    upgrade = "upgrade" in lower.get("connection", "").lower() and "upgrade" in lower
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in HOP_BY_HOP]
    if upgrade:
        lines += ["Connection: Upgrade", f"Upgrade: {lower['upgrade']}"]
    else:
        lines.append("Connection: close")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, upgrade


def error_response(status: int, message: str) -> bytes:
    body = json.dumps({"message": PREFIX + message}).encode()
    reason = http.client.responses.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def relay(client: socket.socket, upstream: socket.socket, upgrade: bool) -> None:
    """Engine -> client until the engine closes. Client bytes go on only on an upgraded (attach)
    stream, where they are the container's stdin, never another HTTP request the proxy did not check."""
    sel = selectors.DefaultSelector()
    sel.register(upstream, selectors.EVENT_READ, "up")
    sel.register(client, selectors.EVENT_READ, "client")
    try:
        while True:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if key.data == "up":
                    if not data:
                        return
                    client.sendall(data)
                elif not data:  # the client closed or half-closed: stop reading it
                    sel.unregister(client)
                    if upgrade:
                        upstream.shutdown(socket.SHUT_WR)
                elif upgrade:
                    upstream.sendall(data)
                else:
                    return  # a second request on a one-request connection: not checked, not forwarded
    except OSError:
        return
    finally:
        sel.close()


class Handler(socketserver.BaseRequestHandler):
    server: ProxyServer

    def handle(self) -> None:
        client: socket.socket = self.request
        reader = client.makefile("rb")
        try:
            method, target, headers, body = read_request(reader)
        except EOFError:
            return
        except (BadRequest, ValueError) as exc:
            client.sendall(error_response(400, str(exc)))
            return
        decision = route(method, target, body, self.server.policy)
        if decision.allowed and decision.container:
            decision = self._check_container(decision)
        path = target.partition("?")[0]
        if not decision.allowed:
            log.warning("refused %s %s: %s", method, path, decision.reason)
            client.sendall(error_response(403, decision.reason))
            return
        log.info("allowed %s %s", method, path)
        data, upgrade = upstream_request(method, target, headers, body)
        try:
            upstream = connect(self.server.upstream)
        except OSError as exc:
            client.sendall(error_response(502, f"the Docker engine is unreachable: {exc}"))
            return
        with upstream:
            upstream.sendall(data)
            relay(client, upstream, upgrade)

    def _check_container(self, decision: Route) -> Route:
        assert decision.container is not None
        try:
            labels = container_labels(self.server.upstream, decision.container)
        except OSError as exc:
            return Route(False, f"could not inspect container {decision.container}: {exc}")
        label = self.server.policy.required_label
        if labels is not None and label not in labels:
            return Route(False, f"container {decision.container} is not managed (no label {label!r})")
        return decision  # labelled, or missing (the engine answers 404 itself)


class ProxyServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], policy: Policy, upstream: str) -> None:
        super().__init__(address, Handler)
        self.policy, self.upstream = policy, upstream


class UnixProxyServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, policy: Policy, upstream: str) -> None:
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, Handler)
        self.policy, self.upstream = policy, upstream


def make_server(listen: str, policy: Policy, upstream: str) -> socketserver.BaseServer:
    if listen.startswith("unix://"):
        return UnixProxyServer(listen[len("unix://") :], policy, upstream)
    host, _, port = listen.removeprefix("tcp://").rpartition(":")
    return ProxyServer((host or "127.0.0.1", int(port)), policy, upstream)


def healthcheck(listen: str) -> int:
    """``--healthcheck``: 0 when the proxy answers ``/_ping`` with the engine's 200 (both are up)."""
    try:
        with connect(listen) as sock:
            sock.settimeout(10)
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            status = sock.recv(64).split(b" ")[1:2]
    except (OSError, IndexError):
        return 1
    return 0 if status == [b"200"] else 1


def main(environ: Mapping[str, str] = os.environ, argv: list[str] = sys.argv[1:]) -> int:
    listen = environ.get("DOCKER_PROXY_LISTEN", "tcp://127.0.0.1:2375")
    if argv == ["--healthcheck"]:
        return healthcheck(listen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        policy = Policy.from_env(environ)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    upstream = environ.get("DOCKER_PROXY_UPSTREAM", "unix:///var/run/docker.sock")
    server = make_server(listen, policy, upstream)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("listening on %s, engine %s, policy %s", listen, upstream, policy)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

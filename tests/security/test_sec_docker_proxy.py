"""The Docker socket proxy's decisions (docker/socket-proxy/docker_socket_proxy.py), without an engine.

The bodies are what docker-py and the docker CLI send: the launcher's own create request (built by the
real DockerOperator code path, docker-py's ``create_container_config``/``create_host_config``) must
pass; each way out of the container (privileged, capabilities, host namespaces, devices, host paths,
other images) must be refused with a reason. The real engine behind the proxy is in
tests/docker/test_docker_proxy.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from docker.api.container import ContainerApiMixin
from docker.types import DeviceRequest, LogConfig, Mount

from tests.support.socket_proxy import load_proxy_module

proxy = load_proxy_module()
IMAGE = "retrain/trainer:cu122"
POLICY = proxy.Policy(
    allowed_images=(IMAGE,),
    allowed_networks=("retrain-trainers",),
    allowed_bind_sources=("/var/lib/retrain/models", "/srv/scratch"),
)


def launcher_body(**host_overrides: Any) -> dict[str, Any]:
    """The create body DockerOperator sends for a trainer stage (docker-py builds it, API 1.41)."""
    from docker import APIClient

    client = APIClient(base_url="tcp://127.0.0.1:1", version="1.41")
    host = dict(
        auto_remove=False,
        mounts=[
            Mount(target="/models", source="/var/lib/retrain/models", type="bind"),
            Mount(target="/work", source="/srv/scratch", type="bind"),
        ],
        network_mode="retrain-trainers",
        shm_size=16 * 1024**3,
        cpu_shares=1024,
        port_bindings={},
        mem_limit=None,
        cap_add=None,
        privileged=False,
        device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])],
        log_config=LogConfig(config={}),
    )
    host.update(host_overrides)
    config = ContainerApiMixin.create_container_config(
        client,
        IMAGE,
        ["retrain", "train", "--run-uri", "s3://b/runs/x"],
        environment={"AWS_SECRET_ACCESS_KEY": "s3cr3t"},
        host_config=client.create_host_config(**host),
        entrypoint=[],
        labels={"org.retrain.stage": "train"},
        ports=[],
    )
    return json.loads(json.dumps(config))


def refused(body: dict[str, Any], policy: Any = POLICY) -> str:
    problems = proxy.check_create(body, policy)
    assert problems, "the proxy allowed it"
    return "; ".join(problems)


def test_the_launchers_own_request_is_allowed() -> None:
    assert proxy.check_create(launcher_body(), POLICY) == []
    hardened = launcher_body(cap_drop=["ALL"], security_opt=["no-new-privileges"], read_only=False)
    assert proxy.check_create(hardened, POLICY) == []


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ({"privileged": True}, "Privileged is not allowed"),
        ({"cap_add": ["SYS_ADMIN"]}, "CapAdd ['SYS_ADMIN']"),
        ({"security_opt": ["seccomp=unconfined"]}, "SecurityOpt ['seccomp=unconfined']"),
        ({"security_opt": ["apparmor=unconfined"]}, "only no-new-privileges"),
        ({"network_mode": "host"}, "network 'host' is not allowed"),
        ({"network_mode": "container:postgres"}, "network 'container:postgres'"),
        ({"network_mode": None}, "network 'default' is not allowed"),
        ({"pid_mode": "host"}, "PidMode 'host'"),
        ({"ipc_mode": "host"}, "IpcMode 'host'"),
        ({"userns_mode": "host"}, "UsernsMode 'host'"),
        ({"devices": ["/dev/sda:/dev/sda:rwm"]}, "Devices are not allowed"),
        ({"device_cgroup_rules": ["b 8:* rmw"]}, "DeviceCgroupRules"),
        ({"device_requests": [DeviceRequest(driver="evil", count=1, capabilities=[["gpu"]])]}, "device"),
        ({"device_requests": [DeviceRequest(count=1, capabilities=[["compute"]])]}, "only GPU"),
        ({"mounts": [Mount(target="/host", source="/", type="bind")]}, "host path '/'"),
        ({"mounts": [Mount(target="/s", source="/var/run/docker.sock", type="bind")]}, "docker.sock"),
        ({"mounts": [Mount(target="/m", source="/var/lib/retrain/models/../../..", type="bind")]}, "../"),
        ({"mounts": [Mount(target="/m", source="/var/lib/retrain/models-evil", type="bind")]}, "-evil"),
        # under the cache is not the cache: a trainer may have left /models/x -> / there
        ({"mounts": [Mount(target="/m", source="/var/lib/retrain/models/x", type="bind")]}, "models/x"),
        ({"mounts": [Mount(target="/v", source="anyvolume", type="volume")]}, "volume mount"),
        ({"binds": ["/etc:/host-etc:ro"]}, "bind '/etc'"),
        ({"volumes_from": ["airflow-worker"]}, "VolumesFrom"),
        ({"port_bindings": {2375: 2375}}, "published ports"),
        ({"publish_all_ports": True}, "published ports"),
        ({"restart_policy": {"Name": "always"}}, "restart policy 'always'"),
        ({"runtime": "runsc-debug"}, "runtime"),
        ({"sysctls": {"net.ipv4.ip_forward": "1"}}, "Sysctls"),
        ({"cgroup_parent": "/"}, "CgroupParent"),
        ({"log_config": LogConfig(type="syslog", config={})}, "log driver 'syslog'"),
    ],
)
def test_ways_out_of_the_container_are_refused(host: dict[str, Any], reason: str) -> None:
    assert reason in refused(launcher_body(**host))


def test_another_image_a_missing_label_and_root_are_refused() -> None:
    body = launcher_body()
    assert "image 'alpine' is not allowed" in refused({**body, "Image": "alpine"})
    # the tag is part of the reference: a different tag of the trainer is another image
    assert "is not allowed" in refused({**body, "Image": "retrain/trainer:latest"})
    assert "label 'org.retrain.stage'" in refused({**body, "Labels": {}})
    assert "root" in refused({**body, "User": "0:0"})
    assert "root" in refused({**body, "User": "root"})
    allow_root = proxy.Policy(**{**POLICY.__dict__, "allow_root_user": True})
    assert proxy.check_create({**body, "User": "0"}, allow_root) == []


def test_fields_the_proxy_does_not_know_are_refused_when_set() -> None:
    body = launcher_body()
    body["HostConfig"]["SomeFutureEscapeHatch"] = True
    assert "SomeFutureEscapeHatch" in refused(body)
    body["HostConfig"]["SomeFutureEscapeHatch"] = False  # its zero value asks for nothing
    assert proxy.check_create(body, POLICY) == []
    unmasked = copy.deepcopy(launcher_body())
    unmasked["HostConfig"]["MaskedPaths"] = []  # what --security-opt systempaths=unconfined sends
    assert "MaskedPaths" in refused(unmasked)


def test_gpus_can_be_turned_off_and_extra_networks_must_be_allowed() -> None:
    no_gpu = proxy.Policy(**{**POLICY.__dict__, "allow_gpus": False})
    assert "only GPU" in refused(launcher_body(), no_gpu)
    body = launcher_body()
    body["NetworkingConfig"] = {"EndpointsConfig": {"retrain": {}}}
    assert "networks ['retrain']" in refused(body)


def test_malformed_bodies_are_refused() -> None:
    assert proxy.check_create([], POLICY) == ["the request body is not a JSON object"]
    assert proxy.check_create({"Image": IMAGE, "HostConfig": "x"}, POLICY) == [
        "HostConfig is not a JSON object"
    ]
    decision = proxy.route("POST", "/v1.41/containers/create", b"{not json", POLICY)
    assert not decision.allowed and "not accepted" in decision.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # Go's encoding/json matches field names case-insensitively, with Unicode folding
        (
            '{"Image": "%s", "Labels": {"org.retrain.stage": "t"}, "hostconfig": {"Privileged": true}}',
            "spelt",
        ),
        (
            '{"Image": "%s", "Labels": {"org.retrain.stage": "t"}, "Ho\u017ftConfig": {"Privileged": true}}',
            "spelt",
        ),
        ('{"Image": "%s", "HostConfig": {"RestartPolicy": {"name": "always"}}}', "spelt 'Name'"),
        # a repeated object is merged by the engine, so the first one's Privileged would survive
        (
            '{"Image": "%s", "Labels": {"org.retrain.stage": "t"}, "HostConfig": {"Privileged": true}, '
            '"HostConfig": {"NetworkMode": "retrain-trainers"}}',
            "appears twice",
        ),
    ],
)
def test_bodies_the_engine_would_read_differently_are_refused(raw: str, reason: str) -> None:
    decision = proxy.route("POST", "/containers/create", (raw % IMAGE).encode(), POLICY)
    assert not decision.allowed and reason in decision.reason, decision.reason


@pytest.mark.parametrize(
    ("method", "target", "allowed", "container"),
    [
        ("HEAD", "/_ping", True, None),
        ("GET", "/v1.41/version", True, None),
        ("GET", "/v1.41/images/json?filters=%7B%7D", True, None),
        ("GET", "/v1.41/images/retrain/trainer:cu122/json", True, None),
        ("GET", "/v1.41/containers/json?all=1", True, None),
        ("POST", "/v1.41/containers/abc123/start", True, "abc123"),
        ("POST", "/v1.41/containers/abc123/attach?stream=1&stdout=1", True, "abc123"),
        ("POST", "/v1.41/containers/abc123/wait", True, "abc123"),
        ("GET", "/v1.41/containers/abc123/logs?stdout=1", True, "abc123"),
        ("GET", "/v1.41/containers/abc123/json", True, "abc123"),
        ("POST", "/v1.41/containers/abc123/stop", True, "abc123"),
        ("DELETE", "/v1.41/containers/abc123?force=1", True, "abc123"),
        ("POST", "/v1.41/containers/abc123/exec", False, None),
        ("GET", "/v1.41/containers/abc123/archive?path=/", False, None),
        ("PUT", "/v1.41/containers/abc123/archive?path=/", False, None),
        ("POST", "/v1.41/containers/abc123/update", False, None),
        ("POST", "/v1.41/exec/abc/start", False, None),
        ("POST", "/v1.41/build", False, None),
        ("POST", "/v1.41/commit?container=abc", False, None),
        ("POST", "/v1.41/volumes/create", False, None),
        ("POST", "/v1.41/networks/create", False, None),
        ("GET", "/v1.41/info", False, None),
        ("POST", "/v1.41/swarm/init", False, None),
        ("POST", "/v1.41/plugins/pull", False, None),
        ("POST", "/v1.41/images/create?fromImage=alpine&tag=latest", False, None),
        ("POST", "/v1.41/images/create?fromImage=retrain/trainer&tag=cu122", True, None),
        ("POST", "/v1.41/containers/..%2Fexec/start", False, None),
    ],
)
def test_only_the_launchers_endpoints_are_routed(method, target, allowed, container) -> None:
    decision = proxy.route(method, target, b"", POLICY)
    assert decision.allowed is allowed, decision.reason
    assert decision.container == container
    if not allowed:
        assert decision.reason


def test_old_api_versions_odd_paths_and_bodies_outside_create_are_refused() -> None:
    # API < 1.24: a start request could carry its own HostConfig (the 20.10 engine still applies it)
    start = b'{"Privileged": true, "Binds": ["/:/host"]}'
    assert "before 1.24" in proxy.route("POST", "/v1.23/containers/abc/start", b"", POLICY).reason
    assert "may not carry a body" in proxy.route("POST", "/v1.41/containers/abc/start", start, POLICY).reason
    assert "normal form" in proxy.route("GET", "/v1.41/images/../containers/abc/json", b"", POLICY).reason
    assert "normal form" in proxy.route("POST", "//containers/create", b"{}", POLICY).reason
    assert "'#'" in proxy.route("POST", "/containers/abc/start#/../../exec", b"", POLICY).reason
    assert proxy.route("GET", "/v1.24/version", b"", POLICY).allowed


def test_settings_from_the_environment() -> None:
    with pytest.raises(ValueError, match="DOCKER_PROXY_ALLOWED_IMAGES"):
        proxy.Policy.from_env({})
    with pytest.raises(ValueError, match="may not contain /"):
        proxy.Policy.from_env(
            {"DOCKER_PROXY_ALLOWED_IMAGES": IMAGE, "DOCKER_PROXY_ALLOWED_BIND_SOURCES": "/"}
        )
    with pytest.raises(ValueError, match="absolute"):
        proxy.Policy.from_env(
            {"DOCKER_PROXY_ALLOWED_IMAGES": IMAGE, "DOCKER_PROXY_ALLOWED_BIND_SOURCES": "x"}
        )
    policy = proxy.Policy.from_env(
        {
            "DOCKER_PROXY_ALLOWED_IMAGES": f"{IMAGE}, retrain/trainer:cpu",
            "DOCKER_PROXY_ALLOWED_NETWORKS": "retrain-trainers",
            "DOCKER_PROXY_ALLOWED_BIND_SOURCES": "/var/lib/retrain/models/,/srv/scratch",
            "DOCKER_PROXY_ALLOW_GPUS": "0",
        }
    )
    assert policy.allowed_images == (IMAGE, "retrain/trainer:cpu")
    assert policy.allowed_networks == ("retrain-trainers",)
    assert policy.allowed_bind_sources == ("/var/lib/retrain/models", "/srv/scratch")
    assert policy.allow_gpus is False and policy.allow_root_user is False
    assert policy.required_label == "org.retrain.stage"
    defaults = proxy.Policy.from_env({"DOCKER_PROXY_ALLOWED_IMAGES": IMAGE})
    assert defaults.allowed_networks == ("none",) and defaults.allowed_bind_sources == ()


def test_the_denial_is_json_the_docker_clients_show() -> None:
    response = proxy.error_response(403, "Privileged is not allowed")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden")
    assert json.loads(body) == {"message": "docker-socket-proxy: Privileged is not allowed"}

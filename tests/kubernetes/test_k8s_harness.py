"""The harness itself: real control plane, real scheduler, kubelet double serving pods."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from tests.harness.kubernetes.kubelet_double import POD_BASE_ENV

if TYPE_CHECKING:
    from tests.kubernetes.conftest import K8sEnv

pytestmark = pytest.mark.usefixtures("k8s_cluster")


def _wait(predicate: Any, timeout: float = 20, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s")


def _pod(env: K8sEnv, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(env.core.read_namespaced_pod(name, env.namespace,
                                                       _preload_content=False).data)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_node_is_registered_ready_and_untainted(k8s_cluster: K8sEnv) -> None:
    if k8s_cluster.external:
        pytest.skip("the kubelet double runs on the local harness only")
    node = json.loads(k8s_cluster.core.read_node("atrium-node-0", _preload_content=False).data)
    assert not node["spec"].get("taints")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert node["status"]["allocatable"]["cpu"] == "8"


def test_scheduled_pod_serves_on_its_loopback_ip_and_dies_on_delete(
        k8s_cluster: K8sEnv) -> None:
    if k8s_cluster.external:
        pytest.skip("the kubelet double runs on the local harness only")
    env, name = k8s_cluster, "harness-http"
    body = {"metadata": {"name": name}, "spec": {
        "terminationGracePeriodSeconds": 3,
        "containers": [{
            "name": "web", "image": "ignored",
            "command": [sys.executable, "-m", "http.server"],
            "args": ["--bind", "$(POD_IP)", "8000"],
            "env": [{"name": "POD_IP",
                     "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"containerPort": 8000}],
            "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1},
        }]}}
    env.core.create_namespaced_pod(env.namespace, body, _preload_content=False)

    def ready() -> dict[str, Any] | None:
        pod = _pod(env, name)
        conditions = {c["type"]: c["status"] for c in (pod or {}).get("status", {}).get(
            "conditions") or []}
        return pod if conditions.get("Ready") == "True" else None

    pod = _wait(ready)
    assert pod["spec"]["nodeName"] == "atrium-node-0"  # bound by the real scheduler
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.0.") and ip != "127.0.0.1"
    with urllib.request.urlopen(f"http://{ip}:8000/", timeout=5) as resp:
        assert resp.status == 200
    assert env.kubelet is not None
    pids = env.kubelet.processes()[f"{env.namespace}/{name}"]
    assert len(pids) == 1
    env.core.delete_namespaced_pod(name, env.namespace, _preload_content=False)
    _wait(lambda: _pod(env, name) is None)
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_pod_sees_only_the_environment_its_spec_gives_it(
        k8s_cluster: K8sEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a container, a pod gets its spec's env on a minimal base, not the tester's env."""
    if k8s_cluster.external:
        pytest.skip("the kubelet double runs on the local harness only")
    env, name = k8s_cluster, "harness-env"
    monkeypatch.setenv("ATRIUM_TEST_PROCESS_ONLY", "must-not-reach-the-pod")
    out = tmp_path / "environ.json"
    body = {"metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "env", "image": "ignored",
            "command": [sys.executable, "-c",
                        "import json, os, sys; open(sys.argv[1], 'w').write("
                        "json.dumps(dict(os.environ)))", str(out)],
            "env": [{"name": "GIVEN", "value": "by-the-spec"},
                    {"name": "POD_NAME",
                     "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        }]}}
    env.core.create_namespaced_pod(env.namespace, body, _preload_content=False)
    try:
        _wait(lambda: out.exists() and out.read_text().endswith("}"))
        seen = json.loads(out.read_text())
    finally:
        env.core.delete_namespaced_pod(name, env.namespace, _preload_content=False)
    # (the interpreter itself may add LC_CTYPE when it coerces the C locale)
    assert set(seen) - {"LC_CTYPE"} == {"PATH", "HOSTNAME", "HOME", "GIVEN", "POD_NAME"}
    assert seen["GIVEN"] == "by-the-spec" and seen["POD_NAME"] == name
    assert seen["HOSTNAME"] == name
    assert seen["PATH"] == POD_BASE_ENV["PATH"]
    assert seen["HOME"].endswith("/home")
    _wait(lambda: _pod(env, name) is None)

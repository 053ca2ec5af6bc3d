"""Kubernetes end to end through the portal: a real ``atrium serve`` on the real control
plane, pods served by the kubelet double, everything through the REST API, the proxy and
the desktop bridge.

The portal gets the cluster's kubeconfig, ``ATRIUM_BACKENDS=local,kubernetes``, a pod
configuration (``ATRIUM_K8S_POD_CONFIG``: the venv's JupyterLab and the desktop image's
``start-desktop.sh`` instead of images the double would not run) and the plans of
``tests/kubernetes/catalog.yaml``. Experiment data is a ``hostPath`` volume, which the
double bind-mounts read-only (see its docstring). Local harness only: on an external
cluster the pods would need Atrium's images and the data on every node.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from spawners.base import LABEL_DEPLOYMENT, LABEL_INSTANCE
from spawners.k8s_manifests import DESKTOP_PORT, object_name
from tests.conftest import AtriumServer, cleanup_sessions
from tests.kubernetes.k8s_helpers import (
    alive,
    delete_deployment_objects,
    read,
    write_pod_config,
)
from tests.portal_setup import (
    PORTAL_DATABASES,
    endpoints_of,
    portal_database,
    start_with_catalog,
)
from tests.rfb_client import RfbClient
from tests.sessions import run_code, wait_for
from tests.sweeps import wait_for_sweeps

if TYPE_CHECKING:
    from tests.kubernetes.conftest import K8sEnv

CATALOG = Path(__file__).with_name("catalog.yaml")
LAB, DESKTOP = "JupyterLab (pods)", "Light desktop (pods)"
RIGHT_BUTTON = 4
ESCAPE = 0xFF1B


@pytest.fixture(scope="module", params=PORTAL_DATABASES)
def portal_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """The portal's database: this module runs on SQLite and on PostgreSQL."""
    with portal_database(request.param, tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def portal(k8s_cluster: K8sEnv, tmp_path_factory: pytest.TempPathFactory,
           portal_db: str) -> Iterator[AtriumServer]:
    """``atrium serve`` with the kubernetes backend on the test cluster."""
    env = k8s_cluster
    if env.external:
        pytest.skip("needs the kubelet double: pods run the venv's JupyterLab and host data")
    state = tmp_path_factory.mktemp("k8s-portal")
    srv = AtriumServer(portal_db, state,
                       ATRIUM_BACKENDS="local,kubernetes",
                       ATRIUM_K8S_KUBECONFIG=str(env.kubeconfig),
                       ATRIUM_K8S_NAMESPACE=env.namespace,
                       ATRIUM_K8S_POD_CONFIG=str(write_pod_config(env, state / "pods.yaml")))
    start_with_catalog(srv, CATALOG, ("alice", "bob"))
    try:
        yield srv
    finally:
        srv.stop()
        cleanup_sessions(srv)
        delete_deployment_objects(env, srv.deployment)


def launch_on_pods(client: httpx.Client, name: str, image: str,
                   experiments: list[str] | None = None) -> str:
    plan = next(p["id"] for p in client.get("/api/v1/plans").json()
                if p["image"]["name"] == image and p["backend"] == "kubernetes")
    mine = {e["proposal"]: e["id"] for e in client.get("/api/v1/experiments").json()}
    r = client.post("/api/v1/instances", json={
        "name": name, "plan_id": plan, "experiment_ids": [mine[p] for p in experiments or []]})
    assert r.status_code == 201, r.text
    return str(r.json()["uid"])


def instance_processes(uid: str) -> list[int]:
    """Live local processes of instance ``uid`` (pod containers carry ATRIUM_INSTANCE)."""
    found = []
    want = f"ATRIUM_INSTANCE={uid}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if want in (entry / "environ").read_bytes().split(b"\0") and alive(int(entry.name)):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture(scope="module")
def lab(portal: AtriumServer, k8s_cluster: K8sEnv) -> str:
    """alice's JupyterLab pod with experiment 20261001, ACTIVE."""
    alice = portal.client("alice")
    uid = launch_on_pods(alice, "lab on pods", LAB, ["20261001"])
    data = wait_for(alice, uid, {"ACTIVE"}, timeout=90)
    assert data["backend"] == "kubernetes" and data["ready_protocols"] == ["jupyter"]
    return uid


async def test_jupyter_pod_runs_code_through_the_proxy(portal: AtriumServer, lab: str,
                                                       k8s_cluster: K8sEnv) -> None:
    pod = read(k8s_cluster, "pod", object_name(lab))
    assert pod is not None and pod["spec"]["nodeName"] == "atrium-node-0"
    assert pod["metadata"]["labels"] == {LABEL_INSTANCE: lab,
                                         LABEL_DEPLOYMENT: portal.deployment}
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert endpoints_of(portal, lab) == {"jupyter": f"http://{pod['status']['podIP']}:8888"}
    assert await run_code(portal.url, lab, portal.token("alice"), "6*7") == "42"


async def test_experiment_data_is_mounted_read_only_in_the_pod(
        portal: AtriumServer, lab: str, k8s_cluster: K8sEnv) -> None:
    pod = read(k8s_cluster, "pod", object_name(lab))
    assert pod is not None
    data = next(m for m in pod["spec"]["containers"][0]["volumeMounts"]
                if m["mountPath"] == "/home/alice/data/20261001")
    assert data["readOnly"] is True
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == data["name"])
    source = portal.state_dir / "demo-data" / "20261001"
    assert volume["hostPath"]["path"] == str(source)
    alice = portal.client("alice")
    r = alice.get(f"/instances/{lab}/lab/api/contents/data/20261001/raw/run_0001.csv",
                  params={"content": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["content"].startswith("q,intensity\n") and r.json()["writable"] is False
    token = portal.token("alice")
    out = await run_code(portal.url, lab, token, "open('data/20261001/raw/evil.txt', 'w')")
    assert out.startswith("OSError") and "Read-only file system" in out
    assert not (source / "raw" / "evil.txt").exists()


async def test_outsider_gets_404_on_api_and_proxy(portal: AtriumServer, lab: str) -> None:
    bob = portal.client("bob")
    assert bob.get(f"/api/v1/instances/{lab}").status_code == 404
    assert bob.delete(f"/api/v1/instances/{lab}").status_code == 404
    r = bob.get(f"/instances/{lab}/lab/api/status")
    assert r.status_code == 404 and "error" in r.json()
    assert all(i["uid"] != lab for i in bob.get("/api/v1/instances").json())


async def test_desktop_pod_through_the_bridge(portal: AtriumServer,
                                              k8s_cluster: K8sEnv) -> None:
    """The bridge connects, unchanged, to the pod's vnc:// endpoint; input changes the
    picture; delete removes pod, secret and every process."""
    alice = portal.client("alice")
    uid = launch_on_pods(alice, "desktop on pods", DESKTOP)
    assert wait_for(alice, uid, {"ACTIVE"}, timeout=90)["ready_protocols"] == ["desktop"]
    pod = read(k8s_cluster, "pod", object_name(uid))
    assert pod is not None
    assert endpoints_of(portal, uid) == {
        "desktop": f"vnc://{pod['status']['podIP']}:{DESKTOP_PORT}"}
    processes = instance_processes(uid)
    assert processes, "the desktop pod runs no process"
    url = portal.url.replace("http", "ws", 1) + f"/instances/{uid}/desktop/websockify"
    owner = await RfbClient.connect(url, portal.token("alice"))
    try:
        assert (owner.width, owner.height) == (1280, 800)
        owner.request(incremental=False)
        await owner.update()
        owner.pointer(300, 300, RIGHT_BUTTON)  # openbox opens its root menu
        owner.pointer(300, 300, 0)
        changed, deadline = 0, time.monotonic() + 5
        while changed <= 1000 and time.monotonic() < deadline:
            owner.request(incremental=True)
            try:
                changed += await owner.update(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
        assert changed > 1000, "the owner's click did not change the desktop"
        owner.key(ESCAPE, True)
        owner.key(ESCAPE, False)
    finally:
        owner.close()
    assert alice.delete(f"/api/v1/instances/{uid}").status_code == 202
    wait_for(alice, uid, {"DELETED"}, timeout=60)
    assert read(k8s_cluster, "pod", object_name(uid)) is None
    assert read(k8s_cluster, "secret", object_name(uid)) is None
    wait_until(lambda: not instance_processes(uid), 10,
               f"processes of the deleted desktop left: {instance_processes(uid)}")
    assert not any(alive(p) for p in processes)


async def test_pods_outlive_a_portal_crash_and_are_adopted(
        portal: AtriumServer, lab: str, k8s_cluster: K8sEnv) -> None:
    before = read(k8s_cluster, "pod", object_name(lab))
    assert before is not None
    portal.kill()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{portal.url}/healthz", timeout=1)
    portal.start()
    alice = portal.client("alice")
    assert alice.get(f"/instances/{lab}/lab/api/status").status_code == 200
    # The same JupyterLab: the kernels started before the crash are still there.
    kernels = alice.get(f"/instances/{lab}/lab/api/kernels")
    assert kernels.status_code == 200 and len(kernels.json()) >= 1
    # Whole sweeps ran since (and the work they kicked): the pod was adopted, not recreated.
    wait_for_sweeps(portal, whole=2)
    pods = k8s_cluster.core.list_namespaced_pod(
        k8s_cluster.namespace, label_selector=f"{LABEL_INSTANCE}={lab}").items
    assert [p.metadata.uid for p in pods] == [before["metadata"]["uid"]]
    assert alice.get(f"/api/v1/instances/{lab}").json()["status"] == "ACTIVE"


def test_orphan_pod_is_removed_by_the_sweep(portal: AtriumServer,
                                            k8s_cluster: K8sEnv) -> None:
    """A pod with this deployment's labels and no instance row (e.g. a crash right after
    the create) is deleted by the reconciler's sweep; another deployment's is not."""
    env = k8s_cluster
    orphan, foreign = uuid.uuid4().hex, uuid.uuid4().hex

    def bare_pod(uid: str, deployment: str) -> dict[str, Any]:
        return {"metadata": {"name": object_name(uid), "labels": {
            LABEL_INSTANCE: uid, LABEL_DEPLOYMENT: deployment}},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                "name": "lab", "image": "x", "command": ["/bin/sh", "-c", "exec sleep 600"]}]}}

    env.core.create_namespaced_pod(env.namespace, bare_pod(orphan, portal.deployment),
                                   _preload_content=False)
    env.core.create_namespaced_pod(env.namespace, bare_pod(foreign, "someone-else"),
                                   _preload_content=False)
    try:
        wait_until(lambda: read(env, "pod", object_name(orphan)) is None, 30,
                   "the orphan pod was not removed")
        assert read(env, "pod", object_name(foreign)) is not None
    finally:
        env.core.delete_namespaced_pod(object_name(foreign), env.namespace,
                                       grace_period_seconds=0, _preload_content=False)


def test_delete_removes_pod_secret_and_processes(portal: AtriumServer, lab: str,
                                                 k8s_cluster: K8sEnv) -> None:
    processes = instance_processes(lab)
    assert processes, "the JupyterLab pod runs no process"
    alice = portal.client("alice")
    assert alice.delete(f"/api/v1/instances/{lab}").status_code == 202
    wait_for(alice, lab, {"DELETED"}, timeout=60)
    assert read(k8s_cluster, "pod", object_name(lab)) is None
    assert read(k8s_cluster, "secret", object_name(lab)) is None
    wait_until(lambda: not instance_processes(lab), 10,
               f"processes of the deleted pod left: {instance_processes(lab)}")
    assert not any(alive(p) for p in processes)
    assert os.listdir(portal.state_dir / "sessions") == []  # nothing went to the local backend

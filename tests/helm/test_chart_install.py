"""The chart installed for real on the harness cluster (API server, scheduler, controller
manager; the kubelet double runs the pods' commands): one cluster, one release, the tests in
file order follow its life - dry-run, install, RBAC, a session through two replicas, metrics,
a replica killed, an upgrade, an uninstall.

The portal pods run `atrium serve` from this checkout (the double ignores images) with their
ServiceAccount token at the in-cluster path: the Kubernetes backend uses in-cluster config
and the real RBAC of the chart's Role.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kubernetes import client
from kubernetes.dynamic import DynamicClient
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect
from urllib3.exceptions import ProtocolError

from spawners.base import LABEL_INSTANCE
from tests.conftest import need
from tests.harness.kubernetes.cluster import binaries_present
from tests.harness.kubernetes.podtools import can_bind_mount
from tests.helm.chart import CHART, ci_values, manifest_objects, merged, objects, render
from tests.helm.cluster_fixtures import (
    NAMESPACE,
    PORTAL_SELECTOR,
    RELEASE,
    SESSIONS,
    Site,
    api,
    install_values,
    portal_url,
    start_site,
    stop_site,
    wait_until,
)
from tests.sessions import run_code, wait_for

pytestmark = pytest.mark.slow
LAB = "JupyterLab (pods)"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    need(binaries_present(), "Kubernetes harness binaries: run tests/harness/kubernetes/build.sh")
    # The portal pods' token sits at the in-cluster path in a mount namespace of their own.
    need(can_bind_mount(), "root and unshare (the kubelet double's mount namespaces)")
    s = start_site(tmp_path_factory.mktemp("helm-site"))
    try:
        yield s
    finally:
        stop_site(s)


@pytest.fixture(scope="module")
def helm_config(helm: Any, site: Site) -> Iterator[Any]:
    config = helm.Config(kubeconfig_path=str(site.info.kubeconfig), namespace=NAMESPACE)
    yield config
    config.close()


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What the tests of this module hand on to the next (the release's story)."""
    return {}


def release_objects(helm: Any, release: dict[str, Any], values: dict[str, Any]
                    ) -> list[dict[str, Any]]:
    """The release's objects as rendered for the live cluster, and its hooks (which the
    SDK's release summary leaves out; they do not depend on the cluster's version)."""
    hooks = [o for o in objects(render(helm, values, NAMESPACE, RELEASE))
             if "helm.sh/hook" in (o["metadata"].get("annotations") or {})]
    return manifest_objects(release.get("manifest") or "") + hooks


# ----------------------------------------------------------------------------- dry-run


def test_every_option_passes_server_side_dry_run(helm: Any, helm_config: Any,
                                                 site: Site) -> None:
    """Rendered against the live cluster's version (PDB policy/v1beta1 on 1.20), every
    object - hooks included - is accepted by the API server's validation and admission."""
    ext = client.ApiextensionsV1Api(site.api)
    ext.create_custom_resource_definition({  # the Prometheus operator's CRD, schema-less
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                 "names": {"plural": "servicemonitors", "singular": "servicemonitor",
                           "kind": "ServiceMonitor"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True}}}]}},
        _preload_content=False)
    values = merged(ci_values("all-options"), {"kubernetes": {"sessionsNamespace": SESSIONS}})
    release = helm_config.install(str(CHART), RELEASE, values, namespace=NAMESPACE,
                                  dry_run="server")
    objs = release_objects(helm, release, values)
    assert {o["kind"] for o in objs} >= {"Deployment", "Job", "Role", "ServiceMonitor",
                                         "PodDisruptionBudget", "Ingress", "NetworkPolicy"}
    dynamic = DynamicClient(site.api)
    wait_until(lambda: _served(dynamic), 30, "the ServiceMonitor CRD is served")
    refused = {}
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            # Writing any custom resource crashes this harness build of kube-apiserver 1.20
            # (Go 1.19); the CRD above lets Helm map the kind, test_chart.py checks its shape.
            continue
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = obj["metadata"].get("namespace", NAMESPACE)
        try:
            try:
                resource.create(body=obj, namespace=namespace, dry_run="All")
            except ProtocolError:  # a pooled keep-alive connection the server had closed
                resource.create(body=obj, namespace=namespace, dry_run="All")
        except client.ApiException as exc:
            refused[f"{obj['kind']}/{obj['metadata']['name']}"] = exc.body
    assert refused == {}
    assert site.pods(PORTAL_SELECTOR) == [], "a dry run created pods"


def _served(dynamic: DynamicClient) -> bool:
    try:
        dynamic.resources.invalidate_cache()
        dynamic.resources.get(api_version="monitoring.coreos.com/v1", kind="ServiceMonitor")
        return True
    except Exception:
        return False


# ----------------------------------------------------------------------------- install


def test_install_migrates_applies_the_catalogue_and_runs_two_ready_replicas(
        helm_config: Any, site: Site, state: dict[str, Any]) -> None:
    release = helm_config.install(str(CHART), RELEASE, install_values(), namespace=NAMESPACE,
                                  wait="watcher", timeout=300)
    assert release["status"] == "deployed", release
    migrate = site.get("job", "atrium-migrate")
    assert migrate is not None and migrate["status"].get("succeeded") == 1
    catalog = site.get("job", "atrium-catalog")
    assert catalog is not None and catalog["status"].get("succeeded") == 1
    site.cli("db", "current")  # exit 0: the schema is at this code's head
    pods = site.ready_portals()
    assert len(pods) == 2 and len({p["status"]["podIP"] for p in pods}) == 2
    for pod in pods:
        assert httpx.get(portal_url(pod) + "/readyz").json() == {"status": "ready"}
        assert httpx.get(portal_url(pod) + "/healthz").status_code == 200
    # The demo users; their tokens (what an admin does with `kubectl exec ... atrium`).
    site.cli("demo", "--seed-only")
    state["tokens"] = {u: site.cli("token", "create", u).strip() for u in ("alice", "bob")}
    plans = api(pods[0], state["tokens"]["alice"]).get("/api/v1/plans").json()
    assert {p["image"]["name"] for p in plans if p["backend"] == "kubernetes"} >= {LAB}
    state["portals"] = pods


def _sa_client(site: Site) -> Any:
    reply = site.core.create_namespaced_service_account_token(
        RELEASE, NAMESPACE, {"spec": {"expirationSeconds": 600}}, _preload_content=False)
    configuration = client.Configuration()
    configuration.host = site.info.server
    configuration.ssl_ca_cert = str(site.info.ca_file)
    configuration.api_key = {"authorization": "Bearer "
                             + json.loads(reply.data)["status"]["token"]}
    return client.ApiClient(configuration)


def test_the_service_account_manages_sessions_there_and_nowhere_else(site: Site) -> None:
    """Through the real API server's RBAC, with the portal's own token."""
    core = client.CoreV1Api(_sa_client(site))
    pod = {"metadata": {"name": "rbac-probe"},
           "spec": {"containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
    core.create_namespaced_pod(SESSIONS, pod, dry_run="All", _preload_content=False)
    secret = {"metadata": {"name": "rbac-probe"}, "stringData": {"k": "v"}}
    core.create_namespaced_secret(SESSIONS, secret, _preload_content=False)
    core.patch_namespaced_secret("rbac-probe", SESSIONS, {"metadata": {"labels": {"a": "b"}}},
                                 _preload_content=False)
    core.delete_namespaced_secret("rbac-probe", SESSIONS, _preload_content=False)
    core.list_namespaced_pod(SESSIONS, _preload_content=False)
    refused = {
        "pods in the portal's namespace": lambda: core.list_namespaced_pod(
            NAMESPACE, _preload_content=False),
        "its own site secret": lambda: core.read_namespaced_secret(
            "atrium-site", NAMESPACE, _preload_content=False),
        "pods in default": lambda: core.create_namespaced_pod(
            "default", pod, dry_run="All", _preload_content=False),
        "namespaces": lambda: core.list_namespace(_preload_content=False),
        "nodes": lambda: core.list_node(_preload_content=False),
        "all secrets": lambda: core.list_secret_for_all_namespaces(_preload_content=False),
    }
    for what, call in refused.items():
        with pytest.raises(client.ApiException) as err:
            call()
        assert err.value.status == 403, what


# ----------------------------------------------------------------------------- sessions


async def test_launch_through_replica_a_answers_through_replica_b(
        site: Site, state: dict[str, Any]) -> None:
    a, b = state["portals"]
    token = state["tokens"]["alice"]
    with api(a, token) as alice_a:
        plan = next(p["id"] for p in alice_a.get("/api/v1/plans").json()
                    if p["image"]["name"] == LAB and p["backend"] == "kubernetes")
        r = alice_a.post("/api/v1/instances", json={"name": "helm lab", "plan_id": plan,
                                                    "experiment_ids": []})
        assert r.status_code == 201, r.text
        uid = str(r.json()["uid"])
        wait_for(alice_a, uid, {"ACTIVE"}, timeout=120)
    assert await run_code(portal_url(a), uid, token, "6*7") == "42"
    with api(b, token) as alice_b:
        assert alice_b.get(f"/api/v1/instances/{uid}").json()["status"] == "ACTIVE"
    assert await run_code(portal_url(b), uid, token, "6*7") == "42"
    (session,) = site.pods(f"{LABEL_INSTANCE}={uid}", SESSIONS)
    state["uid"], state["session_pod"] = uid, session["metadata"]["uid"]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_of_the_replicas_show_the_launch(state: dict[str, Any]) -> None:
    scraped = [_samples(httpx.get(f"http://{p['status']['podIP']}:9090/metrics",
                                  timeout=10).text) for p in state["portals"]]

    def total(name: str, **labels: str) -> float:
        return sum(v for got in scraped for (n, lab), v in got.items()
                   if n == name and set(labels.items()) <= set(lab))

    assert total("atrium_launches_total", backend="kubernetes") == 1
    assert total("atrium_launch_duration_seconds_count", backend="kubernetes") == 1
    assert total("atrium_launch_duration_seconds_bucket", backend="kubernetes", le="+Inf") == 1
    assert total("atrium_launch_failures_total") == 0
    # Shared state, from the database: each replica reports the whole deployment.
    for got in scraped:
        assert got[("atrium_instances", (("backend", "kubernetes"), ("status", "ACTIVE")))] == 1
    assert total("atrium_proxy_websockets_open") == 0  # run_code closed its sockets
    wait_until(lambda: total_leaders(state) == 1, 30, "exactly one scheduler leader")


def total_leaders(state: dict[str, Any]) -> float:
    return sum(_samples(httpx.get(f"http://{p['status']['podIP']}:9090/metrics",
                                  timeout=10).text)[("atrium_scheduler_leader", ())]
               for p in state["portals"])


# ------------------------------------------------------------------ across replicas

async def _kernel_socket(pod: dict[str, Any], uid: str, token: str) -> Any:
    async with httpx.AsyncClient(base_url=portal_url(pod), timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as c:
        r = await c.post(f"/instances/{uid}/lab/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]
    url = portal_url(pod).replace("http", "ws", 1) + (
        f"/instances/{uid}/lab/api/kernels/{kernel}/channels")
    return await websocket_connect(HTTPRequest(url, headers={
        "Authorization": f"Bearer {token}"}))


async def test_member_removed_on_b_loses_his_socket_on_a_within_a_second(
        state: dict[str, Any]) -> None:
    a, b = state["portals"]
    uid, tokens = state["uid"], state["tokens"]
    with api(a, tokens["alice"]) as alice_a:
        r = alice_a.post(f"/api/v1/instances/{uid}/members", json={"user": "bob",
                                                                    "role": "USER"})
        assert r.status_code == 201, r.text
        alice_a.patch(f"/api/v1/instances/{uid}/sharing",
                      json={"unrestricted_member_access": True})
    bob = await _kernel_socket(a, uid, tokens["bob"])
    try:
        with api(b, tokens["alice"]) as alice_b:
            assert alice_b.delete(f"/api/v1/instances/{uid}/members/bob").status_code == 204
        removed = time.monotonic()
        while (message := await asyncio.wait_for(bob.read_message(), 5)) is not None:
            pass  # kernel status chatter until the close
        assert message is None and time.monotonic() - removed < 1.0
    finally:
        bob.close()


# The owner connected on one replica counting as present on another is proven with two
# portal processes on one PostgreSQL in tests/test_replicas.py, where the owner can be made
# really away first (her recent proxied requests count as presence for a while).


# ----------------------------------------------------------------------------- disruption


async def test_killing_replica_a_keeps_the_session_and_the_deployment_replaces_it(
        site: Site, state: dict[str, Any]) -> None:
    a, b = state["portals"]
    uid, token = state["uid"], state["tokens"]["alice"]
    socket = await _kernel_socket(a, uid, token)
    site.core.delete_namespaced_pod(a["metadata"]["name"], NAMESPACE, _preload_content=False)
    # SIGTERM: A drains and asks its WebSockets to reconnect elsewhere ("going away").
    while await asyncio.wait_for(socket.read_message(), 30) is not None:
        pass
    assert socket.close_code == 1001
    replaced = wait_until(
        lambda: [p for p in site.ready_portals() if p["metadata"]["name"] != a["metadata"][
            "name"] and p["metadata"]["name"] != b["metadata"]["name"]], 120,
        "a replacement portal pod, ready")
    assert len(site.ready_portals()) == 2
    (session,) = site.pods(f"{LABEL_INSTANCE}={uid}", SESSIONS)  # no duplicate
    assert session["metadata"]["uid"] == state["session_pod"]
    assert await run_code(portal_url(b), uid, token, "6*7") == "42"
    with api(replaced[0], token) as alice_c:
        assert alice_c.get(f"/api/v1/instances/{uid}").json()["status"] == "ACTIVE"
    state["portals"] = site.ready_portals()


async def test_upgrade_rolls_the_portal_without_losing_the_session(
        helm_config: Any, site: Site, state: dict[str, Any]) -> None:
    before = {p["metadata"]["name"] for p in site.pods(PORTAL_SELECTOR)}
    migrate_before = site.get("job", "atrium-migrate")
    assert migrate_before is not None
    values = merged(install_values(), {"portal": {"podAnnotations": {"atrium.test/rev": "2"},
                                                  "extraEnv": {"ATRIUM_SDK_THREADS": "4"}}})
    release = helm_config.upgrade(str(CHART), RELEASE, values, namespace=NAMESPACE,
                                  wait="watcher", timeout=300)
    assert release["status"] == "deployed" and release["revision"] == 2
    migrate = site.get("job", "atrium-migrate")
    assert migrate is not None and migrate["metadata"]["uid"] != migrate_before["metadata"][
        "uid"] and migrate["status"].get("succeeded") == 1
    pods = wait_until(lambda: len(site.pods(PORTAL_SELECTOR)) == 2 and site.ready_portals(),
                      120, "the old replicas gone")
    assert len(pods) == 2 and not {p["metadata"]["name"] for p in pods} & before
    assert all(p["metadata"]["annotations"]["atrium.test/rev"] == "2" for p in pods)
    (session,) = site.pods(f"{LABEL_INSTANCE}={state['uid']}", SESSIONS)
    assert session["metadata"]["uid"] == state["session_pod"]
    token = state["tokens"]["alice"]
    assert await run_code(portal_url(pods[-1]), state["uid"], token, "6*7") == "42"
    state["portals"] = pods


def test_uninstall_removes_the_portal_and_leaves_the_sessions(
        helm_config: Any, site: Site, state: dict[str, Any]) -> None:
    helm_config.uninstall(RELEASE, wait="watcher", timeout=120)
    wait_until(lambda: not site.pods(PORTAL_SELECTOR), 60, "portal pods gone")
    assert site.get("service", RELEASE) is None
    rbac = client.RbacAuthorizationV1Api(site.api)
    assert [r.metadata.name for r in rbac.list_namespaced_role(SESSIONS).items] == []
    # As NOTES.txt says: the sessions keep running, with their secrets.
    (session,) = site.pods(f"{LABEL_INSTANCE}={state['uid']}", SESSIONS)
    assert session["metadata"]["uid"] == state["session_pod"]
    assert session["status"]["phase"] == "Running"
    ip = session["status"]["podIP"]
    lab = f"http://{ip}:8888/instances/{state['uid']}/lab/api/status"
    assert httpx.get(lab, timeout=5).status_code == 403  # JupyterLab answers (no token)
    secrets = site.core.list_namespaced_secret(
        SESSIONS, label_selector=f"{LABEL_INSTANCE}={state['uid']}").items
    assert len(secrets) == 1
    # The documented clean-up removes them.
    selector = f"atrium/deployment={RELEASE}"
    site.core.delete_collection_namespaced_pod(SESSIONS, label_selector=selector)
    site.core.delete_collection_namespaced_secret(SESSIONS, label_selector=selector)
    wait_until(lambda: not site.pods(selector, SESSIONS), 60, "sessions deleted")


def test_portal_pods_left_nothing_running(site: Site) -> None:
    """Every process the double started for the release is gone with its pod."""
    running = {name: pids for name, pids in site.kubelet.processes().items() if pids}
    assert running == {}

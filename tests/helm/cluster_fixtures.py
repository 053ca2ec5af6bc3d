"""A cluster for the chart's install tests, and what a site does before `helm install`.

One control plane (the harness: real API server, scheduler, controller manager) with one
kubelet double, per test module; a fresh PostgreSQL database; the site Secret holding the
cookie secret and the database URL; the sessions namespace. Helpers to find the portal's
pods and to talk to them by pod IP (the harness has no kube-proxy: a pod IP is a loopback
address of this machine).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client

from tests.conftest import PG_URL, need
from tests.harness.kubernetes.cluster import ClusterInfo, LocalCluster, api_client
from tests.harness.kubernetes.kubelet_double import POD_BASE_ENV, KubeletDouble

ROOT = Path(__file__).resolve().parents[2]
RELEASE, NAMESPACE, SESSIONS = "atrium", "atrium", "atrium-sessions"
SITE_SECRET = "atrium-site"
PORTAL_SELECTOR = "app.kubernetes.io/name=atrium,app.kubernetes.io/component=portal"


@dataclass
class Site:
    cluster: LocalCluster
    info: ClusterInfo
    api: Any
    kubelet: KubeletDouble
    database_url: str
    database: str

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    def cli(self, *args: str) -> str:
        """`atrium ARGS` against the release's database (what an admin runs)."""
        env = {**os.environ, "ATRIUM_DATABASE_URL": self.database_url,
               "ATRIUM_STATE_DIR": str(self.info.workdir / "cli-state")}
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env,
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, f"atrium {' '.join(args)}: {result.stderr}"
        return result.stdout

    def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        api = client.BatchV1Api(self.api) if kind == "job" else self.core
        try:
            return dict(json.loads(getattr(api, f"read_namespaced_{kind}")(
                name, namespace, _preload_content=False).data))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, selector: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return list(json.loads(self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False).data)["items"])

    def ready_portals(self) -> list[dict[str, Any]]:
        """Running, Ready portal pods not being deleted, oldest first."""
        out = []
        for pod in self.pods(PORTAL_SELECTOR):
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod.get("status", {}).get("conditions") or [])
            if ready and not pod["metadata"].get("deletionTimestamp"):
                out.append(pod)
        return sorted(out, key=lambda p: p["metadata"]["creationTimestamp"])


def start_site(tmp: Path) -> Site:
    """Cluster + kubelet double + database + site Secret + sessions namespace."""
    import shutil

    need(shutil.which("psql") is not None, "psql (PostgreSQL client) missing")
    database = f"atrium_helm_{secrets.token_hex(4)}"
    made = subprocess.run(["psql", f"{PG_URL}/postgres", "-qc", f"CREATE DATABASE {database}"],
                          capture_output=True, text=True, timeout=30)
    need(made.returncode == 0, f"PostgreSQL at {PG_URL}: {made.stderr}")
    cluster = LocalCluster()
    info = cluster.start()
    api = api_client(info)
    # The portal image's ENV, as this machine has it: the venv's commands, this checkout.
    portal_env = {"PATH": f"{Path(sys.executable).parent}:{POD_BASE_ENV['PATH']}",
                  "PYTHONPATH": str(ROOT)}
    kubelet = KubeletDouble(api, node_name="atrium-helm-node", backoff_base=2.0,
                            sandbox_root=tmp / "kubelet",
                            image_env={"atrium/portal": portal_env})
    kubelet.start()
    site = Site(cluster, info, api, kubelet, f"{PG_URL}/{database}", database)
    for name in (NAMESPACE, SESSIONS):
        site.core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
    site.core.create_namespaced_secret(NAMESPACE, {
        "metadata": {"name": SITE_SECRET},
        "stringData": {"cookie-secret": secrets.token_hex(32),
                       "database-url": site.database_url}}, _preload_content=False)
    return site


def stop_site(site: Site) -> None:
    site.kubelet.stop()
    site.cluster.stop()
    site.api.close()
    subprocess.run(["psql", f"{PG_URL}/postgres", "-qc",
                    f"DROP DATABASE IF EXISTS {site.database} WITH (FORCE)"],
                   capture_output=True, timeout=30)


def install_values() -> dict[str, Any]:
    """The three site values, plus what the harness needs: the pods run the venv's
    commands (the double ignores images) and listen on their own loopback pod IPs."""
    extra = ["--allow-root"] if os.geteuid() == 0 else []
    catalog = yaml.safe_load((ROOT / "tests" / "kubernetes" / "catalog.yaml").read_text())
    return {
        "portal": {"publicUrl": "http://atrium.test", "listenOnPodIP": True,
                   "reconcileInterval": 2, "startTimeout": 120, "defaultQuota": 10,
                   "shutdown": {"drainSeconds": 1, "graceSeconds": 8},
                   "terminationGracePeriodSeconds": 12,
                   "readinessProbe": {"periodSeconds": 1, "failureThreshold": 1},
                   "livenessProbe": {"periodSeconds": 5, "failureThreshold": 6,
                                     "initialDelaySeconds": 5}},
        "cookieSecret": {"existingSecret": SITE_SECRET},
        "database": {"existingSecret": SITE_SECRET},
        "kubernetes": {"sessionsNamespace": SESSIONS, "podConfig": {
            "jupyter_command": [sys.executable, "-m", "jupyterlab"],
            "jupyter_extra_args": extra, "extra_env": {"PYTHONPATH": str(ROOT)},
            "termination_grace_s": 5}},
        "catalog": {"content": catalog},
    }


def portal_url(pod: dict[str, Any]) -> str:
    return f"http://{pod['status']['podIP']}:8000"


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.25)


def api(pod: dict[str, Any], token: str) -> httpx.Client:
    return httpx.Client(base_url=portal_url(pod), timeout=30,
                        headers={"Authorization": f"Bearer {token}"})

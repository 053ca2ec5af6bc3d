"""Fixtures for the Kubernetes backend tests: a real control plane + the kubelet double.

By default a :class:`~tests.harness.kubernetes.cluster.LocalCluster` (etcd, kube-apiserver,
kube-scheduler, kube-controller-manager v1.20.2 on loopback) is started once per test
session, with one :class:`~tests.harness.kubernetes.kubelet_double.KubeletDouble` node.
The binaries come from ``tests/harness/kubernetes/build.sh`` (run it once, ~6 min); with
``CI=true`` or ``ATRIUM_K8S_BUILD=1`` the fixture runs it itself.

When the cluster cannot be started the tests are skipped, except with ``CI=true`` where
they fail: CI must never silently skip the real thing.

Any real cluster instead: ``ATRIUM_TEST_KUBECONFIG=/path/to/kubeconfig`` (e.g. kind, k3s).
Pods then run a real image, ``ATRIUM_TEST_K8S_IMAGE`` (default
``quay.io/jupyter/base-notebook``), with JupyterLab's own token auth, and the pod IPs must be
routable from the machine running pytest for the ``ready`` probes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kubernetes import client, config  # noqa: E402

from spawners.base import InstanceSpec, Owner, Resources  # noqa: E402
from spawners.k8s_manifests import PodOptions  # noqa: E402
from spawners.kubernetes import KubernetesBackend, KubernetesSettings  # noqa: E402
from tests.conftest import need  # noqa: E402
from tests.harness.kubernetes.cluster import (  # noqa: E402
    ClusterError,
    LocalCluster,
    api_client,
    binaries_present,
    run_build,
)
from tests.harness.kubernetes.kubelet_double import KubeletDouble  # noqa: E402

NAMESPACE = "atrium-test"


@dataclass
class K8sEnv:
    """What the tests get: how to reach the cluster and, locally, the kubelet double."""

    kubeconfig: Path
    api_client: Any
    namespace: str
    kubelet: KubeletDouble | None = None  # None on an external cluster
    cluster: LocalCluster | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api_client)

    @property
    def external(self) -> bool:
        return self.cluster is None


def _unavailable(message: str) -> None:
    need(False, f"Kubernetes harness unavailable: {message}")


def _ensure_namespace(core: Any, name: str) -> None:
    try:
        core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
    except client.ApiException as exc:
        if exc.status != 409:
            raise


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[K8sEnv]:
    """A reachable cluster with namespace ``atrium-test``; torn down after the session."""
    external = os.environ.get("ATRIUM_TEST_KUBECONFIG")
    if external:
        configuration = client.Configuration()
        config.load_kube_config(config_file=external, client_configuration=configuration)
        api = client.ApiClient(configuration)
        namespace = f"{NAMESPACE}-{secrets.token_hex(3)}"
        _ensure_namespace(client.CoreV1Api(api), namespace)
        yield K8sEnv(kubeconfig=Path(external), api_client=api, namespace=namespace)
        client.CoreV1Api(api).delete_namespace(namespace, _preload_content=False)
        return
    if not binaries_present():
        if os.environ.get("CI", "").lower() == "true" or os.environ.get("ATRIUM_K8S_BUILD"):
            try:
                run_build()
            except (subprocess.SubprocessError, OSError) as exc:
                _unavailable(f"build.sh failed: {exc}")
        else:
            _unavailable("binaries not built: run tests/harness/kubernetes/build.sh")
    cluster = LocalCluster()
    try:
        info = cluster.start()
    except (ClusterError, OSError, subprocess.SubprocessError) as exc:
        _unavailable(str(exc))
    api = api_client(info)
    kubelet = KubeletDouble(api, node_name="atrium-node-0", cpu="8", memory="32Gi",
                            backoff_base=10.0)
    try:
        kubelet.start()
        _ensure_namespace(client.CoreV1Api(api), NAMESPACE)
    except Exception as exc:
        kubelet.stop()
        cluster.stop()
        _unavailable(f"kubelet double: {exc!r}")
    env = K8sEnv(kubeconfig=info.kubeconfig, api_client=api, namespace=NAMESPACE,
                 kubelet=kubelet, cluster=cluster, timings=dict(cluster.timings))
    component_pids = cluster.pids()
    try:
        yield env
    finally:
        kubelet.stop()
        cluster.stop()
        api.close()
    leaked = [pid for pid in [*kubelet.pids_started, *component_pids] if _alive(pid)]
    assert not leaked, f"processes left behind by the Kubernetes harness: {leaked}"


def _alive(pid: int) -> bool:
    """True when ``pid`` runs (zombies count as gone: they are only awaiting reaping)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


DESKTOP_SCRIPT = ROOT / "images" / "desktop" / "start-desktop.sh"


def pod_options(env: K8sEnv) -> PodOptions:
    """Session pods for this cluster: locally the venv's JupyterLab and the desktop image's
    own start script (Xvnc + openbox, the light session); an image elsewhere."""
    if env.external:
        return PodOptions(identity_provider="")
    extra = ("--allow-root",) if os.geteuid() == 0 else ()  # the double runs as us
    return PodOptions(
        jupyter_command=(sys.executable, "-m", "jupyterlab"),
        jupyter_extra_args=extra,
        desktop_command=(str(DESKTOP_SCRIPT),),
        # images.jupyter_identity must be importable by the "pod" (the double's process).
        extra_env={"PYTHONPATH": str(ROOT), "ATRIUM_DESKTOP_SESSION": "openbox"},
        termination_grace_s=5,
    )


def make_backend(env: K8sEnv, deployment_id: str, **overrides: Any) -> KubernetesBackend:
    """A backend on ``env`` (settings overridable), as Atrium would build it."""
    settings = KubernetesSettings(namespace=env.namespace, kubeconfig=str(env.kubeconfig),
                                  pod=overrides.pop("pod", pod_options(env)),
                                  delete_timeout_s=60, **overrides)
    return KubernetesBackend(deployment_id, settings)


@pytest.fixture(scope="session")
def deployment_id() -> str:
    return f"test-{secrets.token_hex(4)}"


@pytest.fixture
def backend_factory(k8s_cluster: K8sEnv) -> Any:
    """``factory(deployment_id, **settings)``: more backends (restarts, other deployments)."""
    return lambda deployment_id, **kw: make_backend(k8s_cluster, deployment_id, **kw)


@pytest.fixture(scope="session")
async def k8s_backend(k8s_cluster: K8sEnv, deployment_id: str
                      ) -> AsyncIterator[KubernetesBackend]:
    backend = make_backend(k8s_cluster, deployment_id)
    yield backend
    await backend.close()


def image_ref(env: K8sEnv) -> str:
    if env.external:
        return os.environ.get("ATRIUM_TEST_K8S_IMAGE", "quay.io/jupyter/base-notebook")
    return "atrium/ignored-by-the-kubelet-double:latest"


@pytest.fixture
def make_spec(k8s_cluster: K8sEnv) -> Any:
    """Factory of InstanceSpecs with a fresh uid and fresh secrets."""
    def factory(**kwargs: Any) -> InstanceSpec:
        values: dict[str, Any] = {
            "uid": uuid.uuid4().hex, "name": "test session", "image_ref": image_ref(k8s_cluster),
            "flavour_ref": "small", "protocols": ("jupyter",),
            "owner": Owner(username="alice", uid=1000, gid=1000),
            "resources": Resources(cpus=0.5, memory_mb=512),
            "secrets": {"jupyter_token": secrets.token_hex(16),
                        "vnc_password": secrets.token_hex(4)},
        }
        values.update(kwargs)
        return InstanceSpec(**values)
    return factory

"""KubernetesBackend against the real API server, scheduler and the kubelet double."""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from spawners.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    DataMount,
    Resources,
    ResourceState,
)
from spawners.k8s_manifests import (
    DESKTOP_PORT,
    Placement,
    PodOptions,
    make_secret,
    object_name,
)
from spawners.kubernetes import KubernetesBackend
from tests.kubernetes.k8s_helpers import (
    Checkpoints,
    alive,
    execute,
    observe_until,
    read,
    sleeper,
)
from web.desktop import VncHandshakeError, vnc_connect

if TYPE_CHECKING:
    from tests.kubernetes.conftest import K8sEnv


async def test_jupyter_lifecycle(k8s_cluster: K8sEnv, k8s_backend: KubernetesBackend,
                                 make_spec: Any) -> None:
    env = k8s_cluster
    spec = make_spec(resources=Resources(cpus=0.5, memory_mb=768),
                     mounts=(DataMount("p1", "/tmp", "data/p1"),))
    checkpoints = Checkpoints()
    t0 = time.monotonic()
    state = await k8s_backend.create(spec, checkpoints)
    assert checkpoints.states and checkpoints.states[0]["pod"] == state["pod"]
    name = state["pod"]
    try:
        obs = await observe_until(k8s_backend, spec, state,
                                  lambda o: "jupyter" in o.ready, within=60)
        started = time.monotonic() - t0
        assert obs.state is ResourceState.RUNNING
        assert obs.endpoints["jupyter"].startswith("http://127.0.")
        assert obs.backend_state["node"] == "atrium-node-0"
        assert obs.processes == {"jupyter"}
        # The flavour's resources and read-only data reached the pod spec.
        pod = read(env, "pod", name)
        assert pod is not None
        lab = pod["spec"]["containers"][0]
        assert lab["resources"]["limits"] == {"cpu": "500m", "memory": "768Mi"}
        data = next(m for m in lab["volumeMounts"] if m["mountPath"].endswith("data/p1"))
        assert data["readOnly"] is True
        # The secret exists and belongs to the pod (garbage-collected with it).
        secret = read(env, "secret", name)
        assert secret is not None
        assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        # A kernel really runs in the "pod".
        # The kernel is left running: deleting the pod must kill it too.
        result = await execute(obs.endpoints["jupyter"], spec.base_url,
                               spec.secrets["jupyter_token"], "6*7", keep_kernel=True)
        assert result == "42"
        managed = await k8s_backend.list_managed()
        assert managed[spec.uid].state is ResourceState.RUNNING
        pids = env.kubelet.processes()[f"{env.namespace}/{name}"] if env.kubelet else []
        assert not env.kubelet or len(pids) >= 2  # JupyterLab and its kernel
    finally:
        t1 = time.monotonic()
        await k8s_backend.delete(spec.uid, state)
        deleted = time.monotonic() - t1
    gone = await k8s_backend.observe(spec.uid, state, spec.secrets, spec.protocols)
    assert gone.state is ResourceState.GONE
    assert read(env, "pod", name) is None and read(env, "secret", name) is None
    assert spec.uid not in await k8s_backend.list_managed()
    for pid in pids:
        assert not alive(pid), f"process {pid} of the deleted pod still runs"
    print(f"\nJupyterLab pod ready in {started:.1f} s, deleted in {deleted:.1f} s")


async def test_create_is_idempotent_and_adopted_after_restart(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any
        ) -> None:
    options = sleeper(backend_factory(deployment_id).settings.pod)
    first = backend_factory(deployment_id, pod=options)
    spec = make_spec()
    state = await first.create(spec, Checkpoints())
    second: KubernetesBackend | None = None
    try:
        again = await first.create(spec, Checkpoints())
        assert again["pod_uid"] == state["pod_uid"]
        # "Restart Atrium": a new backend finds the pod and adopts it, no new pod.
        await first.close()
        second = backend_factory(deployment_id, pod=options)
        managed = await second.list_managed()
        assert managed[spec.uid].backend_state["pod_uid"] == state["pod_uid"]
        adopted = await second.create(spec, Checkpoints())
        assert adopted["pod_uid"] == state["pod_uid"]
        pods = k8s_cluster.core.list_namespaced_pod(
            k8s_cluster.namespace, label_selector=f"{LABEL_INSTANCE}={spec.uid}")
        assert len(pods.items) == 1
    finally:
        await (second or first).delete(spec.uid, state)
        if second is not None:
            await second.close()


@pytest.mark.parametrize("command, expected", [
    (("/bin/sh", "-c", "exit 1"), "CrashLoopBackOff"),
    (("/nonexistent/jupyter",), "RunContainerError"),
])
async def test_failing_command_is_failed_with_reason(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any,
        command: tuple[str, ...], expected: str) -> None:
    if k8s_cluster.external and expected == "RunContainerError":
        expected = "container lab: "  # runtimes name this StartError, CreateContainerError...
    backend = backend_factory(deployment_id, pod=PodOptions(jupyter_command=command))
    spec = make_spec()
    state = await backend.create(spec, Checkpoints())
    try:
        obs = await observe_until(backend, spec, state,
                                  lambda o: o.state is ResourceState.FAILED, within=20)
        assert expected in obs.reason
        assert obs.processes == frozenset()
        if expected == "CrashLoopBackOff":
            assert "last exit code 1" in obs.reason
    finally:
        await backend.delete(spec.uid, state)
        await backend.close()


@pytest.mark.parametrize("flavour, resources, expected", [
    ("small", Resources(cpus=1000, memory_mb=512), "Insufficient cpu"),
    ("small", Resources(cpus=0.5, memory_mb=512, gpus=2), "Insufficient nvidia.com/gpu"),
    ("a100", Resources(cpus=0.5, memory_mb=512), "node(s) didn't match"),
])
async def test_unschedulable_flavour_fails_with_the_schedulers_reason(
        backend_factory: Any, deployment_id: str, make_spec: Any, flavour: str,
        resources: Resources, expected: str) -> None:
    base = backend_factory(deployment_id).settings.pod
    options = replace(sleeper(base), placements={"a100": Placement({"gpu": "a100"})})
    backend = backend_factory(deployment_id, pod=options)
    spec = make_spec(resources=resources, flavour_ref=flavour)
    state = await backend.create(spec, Checkpoints())
    try:
        obs = await observe_until(backend, spec, state,
                                  lambda o: o.state is ResourceState.FAILED, within=20)
        assert obs.reason.startswith("Unschedulable: ")
        assert expected in obs.reason
    finally:
        await backend.delete(spec.uid, state)
        await backend.close()


async def test_leftover_secret_is_listed_for_reconcile(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any
        ) -> None:
    """A crash between creating the secret and the pod leaves a secret alone."""
    env = k8s_cluster
    backend = backend_factory(deployment_id, leftover_grace_s=0)
    spec = make_spec()
    env.core.create_namespaced_secret(
        env.namespace, make_secret(spec, deployment_id, env.namespace), _preload_content=False)
    try:
        managed = await backend.list_managed()
        assert managed[spec.uid].state is ResourceState.GONE
        await backend.delete(spec.uid, managed[spec.uid].backend_state)
        assert read(env, "secret", object_name(spec.uid)) is None
        assert spec.uid not in await backend.list_managed()
        # Younger than the grace: maybe a create in progress, not reported.
        env.core.create_namespaced_secret(
            env.namespace, make_secret(spec, deployment_id, env.namespace),
            _preload_content=False)
        patient = backend_factory(deployment_id)
        assert spec.uid not in await patient.list_managed()
        await patient.close()
    finally:
        await backend.delete(spec.uid, {})
        await backend.close()


async def test_desktop_and_jupyter_in_one_pod(k8s_cluster: K8sEnv, backend_factory: Any,
                                              deployment_id: str, make_spec: Any) -> None:
    """Two containers, one pod IP: the desktop image's start-desktop.sh, whose Xvnc takes
    the instance's password exactly as the portal's bridge sends it, next to a stand-in
    JupyterLab (a real one is served in test_jupyter_lifecycle)."""
    if k8s_cluster.external:
        pytest.skip("needs the desktop image; the kubelet double runs the script locally")
    base = backend_factory(deployment_id).settings.pod
    backend = backend_factory(deployment_id, pod=replace(
        sleeper(base), desktop_command=base.desktop_command))
    spec = make_spec(protocols=("jupyter", "desktop"))
    state = await backend.create(spec, Checkpoints())
    try:
        obs = await observe_until(backend, spec, state, lambda o: o.ready == {"desktop"}
                                  and o.processes == {"jupyter", "desktop"}, within=60)
        ip = obs.backend_state["pod_ip"]
        assert obs.endpoints == {"jupyter": f"http://{ip}:8888",
                                 "desktop": f"vnc://{ip}:{DESKTOP_PORT}"}
        reader, writer = await vnc_connect(obs.endpoints["desktop"],
                                           spec.secrets["vnc_password"])
        writer.write(b"\x01")  # ClientInit (shared): the server describes its screen
        assert struct.unpack(">HH", (await reader.readexactly(24))[:4]) == (1280, 800)
        writer.close()
        with pytest.raises(VncHandshakeError, match="refused"):
            await vnc_connect(obs.endpoints["desktop"], "wrong-pw")
        managed = await backend.list_managed()
        assert set(managed[spec.uid].endpoints) == {"jupyter", "desktop"}
        assert obs.processes == managed[spec.uid].processes == {"jupyter", "desktop"}
    finally:
        await backend.delete(spec.uid, state)
        await backend.close()


async def test_orphans_and_vanished_pods(k8s_cluster: K8sEnv, backend_factory: Any,
                                         deployment_id: str, make_spec: Any) -> None:
    env = k8s_cluster
    options = sleeper(backend_factory(deployment_id).settings.pod)
    backend = backend_factory(deployment_id, pod=options)
    orphan_uid, foreign_uid = uuid.uuid4().hex, uuid.uuid4().hex

    def bare_pod(uid: str, deployment: str) -> dict[str, Any]:
        return {"metadata": {"name": object_name(uid), "labels": {
            LABEL_INSTANCE: uid, LABEL_DEPLOYMENT: deployment}},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                "name": "lab", "image": "x", "command": list(options.jupyter_command)}]}}

    env.core.create_namespaced_pod(env.namespace, bare_pod(orphan_uid, deployment_id),
                                   _preload_content=False)
    env.core.create_namespaced_pod(env.namespace, bare_pod(foreign_uid, "other-deployment"),
                                   _preload_content=False)
    spec = make_spec()
    state = await backend.create(spec, Checkpoints())
    try:
        managed = await backend.list_managed()
        assert orphan_uid in managed and spec.uid in managed
        assert foreign_uid not in managed  # another deployment's pods are not ours
        await backend.delete(orphan_uid, {})  # what reconcile does with an orphan
        assert orphan_uid not in await backend.list_managed()
        # A pod deleted behind Atrium's back: the watch reports it GONE (an event).
        await observe_until(backend, spec, state,
                            lambda o: o.state is not ResourceState.GONE, within=10)
        env.core.delete_namespaced_pod(state["pod"], env.namespace, grace_period_seconds=0,
                                       _preload_content=False)
        await observe_until(backend, spec, state,
                            lambda o: o.state is ResourceState.GONE, within=10)
    finally:
        await backend.delete(spec.uid, state)
        env.core.delete_namespaced_pod(object_name(foreign_uid), env.namespace,
                                       grace_period_seconds=0, _preload_content=False)
        await backend.close()


async def test_observe_answers_from_the_watch_cache(backend_factory: Any, deployment_id: str,
                                                    make_spec: Any) -> None:
    options = sleeper(backend_factory(deployment_id).settings.pod)
    backend = backend_factory(deployment_id, pod=options)
    spec = make_spec()
    state = await backend.create(spec, Checkpoints())
    try:
        await observe_until(backend, spec, state,
                            lambda o: o.state is ResourceState.RUNNING, within=20)
        calls = 0
        original = backend.core.read_namespaced_pod

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        backend.core.read_namespaced_pod = counting
        for _ in range(20):
            obs = await backend.observe(spec.uid, state, spec.secrets, spec.protocols)
            assert obs.state is ResourceState.RUNNING
        assert calls == 0
        backend.core.read_namespaced_pod = original
    finally:
        await backend.delete(spec.uid, state)
        await backend.close()


async def test_stop_start_reboot_and_service_mode(k8s_cluster: K8sEnv, backend_factory: Any,
                                           deployment_id: str, make_spec: Any) -> None:
    env = k8s_cluster
    options = sleeper(backend_factory(deployment_id).settings.pod)
    backend = backend_factory(deployment_id, pod=options, use_service=True)
    spec = make_spec()
    state = await backend.create(spec, Checkpoints())
    try:
        name = state["pod"]
        assert state["service"] == name
        service = read(env, "service", name)
        assert service is not None
        assert service["spec"]["selector"][LABEL_INSTANCE] == spec.uid
        obs = await observe_until(backend, spec, state,
                                  lambda o: o.state is ResourceState.RUNNING, within=20)
        assert obs.endpoints == {"jupyter": f"http://{name}.{env.namespace}.svc:8888"}
        stopped = await backend.stop(spec.uid, state)
        assert read(env, "pod", name) is None and read(env, "service", name) is None
        obs = await backend.observe(spec.uid, stopped, spec.secrets, spec.protocols)
        assert obs.state is ResourceState.STOPPED
        state = await backend.start(spec, stopped, Checkpoints())
        await observe_until(backend, spec, state,
                            lambda o: o.state is ResourceState.RUNNING, within=20)
        rebooted = await backend.reboot(spec, state, Checkpoints())
        assert rebooted["pod_uid"] != state["pod_uid"]
        state = rebooted
        await observe_until(backend, spec, state,
                            lambda o: o.state is ResourceState.RUNNING, within=20)
    finally:
        await backend.delete(spec.uid, state)
        await backend.close()

"""The Kubernetes backend's refusals and collisions, enforced by the real API server:
a ResourceQuota refusal (a CapacityError naming the quota, nothing left behind), a pod name
taken by another instance (refused, the other pod untouched), and a pod of the same
instance still terminating (waited for, then replaced; an error if it never goes).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client

from spawners.base import LABEL_DEPLOYMENT, LABEL_INSTANCE, BackendError, CapacityError
from spawners.k8s_manifests import make_pod, object_name
from spawners.kubernetes import KubernetesBackend
from tests.kubernetes.conftest import make_backend
from tests.kubernetes.k8s_helpers import Checkpoints, read, sleeper

if TYPE_CHECKING:
    from tests.kubernetes.conftest import K8sEnv

pytestmark = pytest.mark.timeout(180)
HOLD = "atrium.test/hold"  # a finalizer that keeps a deleted pod terminating


def release(env: K8sEnv, name: str) -> None:
    """Drop the pod's finalizers (a merge patch: a strategic one merges finalizer lists)."""
    env.core.patch_namespaced_pod(name, env.namespace, {"metadata": {"finalizers": None}},
                                  _content_type="application/merge-patch+json",
                                  _preload_content=False)


def wait(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


async def test_a_resource_quota_refusal_is_a_capacity_error_naming_the_quota(
        k8s_cluster: K8sEnv, deployment_id: str, make_spec: Any) -> None:
    core = k8s_cluster.core
    ns = f"atrium-quota-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": ns}}, _preload_content=False)
    backend: KubernetesBackend | None = None
    try:
        core.create_namespaced_resource_quota(ns, {
            "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}},
            _preload_content=False)

        def enforced() -> bool:  # the quota controller has computed its status
            quota = json.loads(core.read_namespaced_resource_quota(
                "no-pods", ns, _preload_content=False).data)
            return bool(quota.get("status", {}).get("hard"))
        wait(enforced, 60, "the quota controller never computed the quota's status")

        env = replace(k8s_cluster, namespace=ns)
        backend = make_backend(env, deployment_id, pod=sleeper(
            make_backend(env, deployment_id).settings.pod))
        spec = make_spec()
        with pytest.raises(CapacityError) as refused:
            await backend.create(spec, Checkpoints())
        reason = str(refused.value)
        assert reason.startswith("kubernetes: create pod: ")
        assert "exceeded quota: no-pods" in reason and "limited: pods=0" in reason
        # What the reconciler does next (release): nothing of the launch stays.
        await backend.delete(spec.uid, {"namespace": ns})
        assert core.list_namespaced_pod(ns).items == []
        assert [s.metadata.name for s in core.list_namespaced_secret(ns).items
                if s.metadata.name == object_name(spec.uid)] == []
    finally:
        if backend is not None:
            await backend.close()
        core.delete_namespace(ns, _preload_content=False)


async def test_a_pod_name_taken_by_another_instance_is_refused_and_left_alone(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any
        ) -> None:
    env = k8s_cluster
    backend = backend_factory(deployment_id,
                              pod=sleeper(backend_factory(deployment_id).settings.pod))
    spec, other = make_spec(), make_spec()
    # A pod of another instance under the name this instance's pod would get.
    squatter = make_pod(other, deployment_id, env.namespace, backend.settings.pod)
    squatter["metadata"]["name"] = object_name(spec.uid)
    env.core.create_namespaced_pod(env.namespace, squatter, _preload_content=False)
    before = read(env, "pod", object_name(spec.uid))
    assert before is not None
    try:
        with pytest.raises(BackendError, match=f"belongs to instance '{other.uid}'"):
            await backend.create(spec, Checkpoints())
        after = read(env, "pod", object_name(spec.uid))
        assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"]
        assert not after["metadata"].get("deletionTimestamp")
        assert after["metadata"]["labels"][LABEL_INSTANCE] == other.uid
    finally:
        await backend.delete(other.uid, {"pod": object_name(spec.uid)})
        await backend.delete(spec.uid, {})
        await backend.close()


async def test_a_terminating_pod_of_the_instance_is_waited_for_then_replaced(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any
        ) -> None:
    env = k8s_cluster
    backend = backend_factory(deployment_id,
                              pod=sleeper(backend_factory(deployment_id).settings.pod))
    spec = make_spec()
    name = object_name(spec.uid)
    state = await backend.create(spec, Checkpoints())
    impatient = KubernetesBackend(deployment_id, replace(backend.settings, delete_timeout_s=2))
    try:
        # The pod is being deleted (e.g. a stop) but cannot go yet: a finalizer holds it.
        env.core.patch_namespaced_pod(name, env.namespace, {"metadata": {"finalizers": [HOLD]}},
                                      _preload_content=False)
        env.core.delete_namespaced_pod(name, env.namespace, _preload_content=False)
        wait(lambda: bool((read(env, "pod", name) or {}).get("metadata", {})
                          .get("deletionTimestamp")), 30, "the pod is not terminating")

        # Never gone within the backend's delete timeout: an error, not an adoption.
        with pytest.raises(BackendError, match="is still terminating"):
            await impatient.create(spec, Checkpoints())

        creating = asyncio.create_task(backend.create(spec, Checkpoints()))
        done, _ = await asyncio.wait({creating}, timeout=3)
        assert not done, "create adopted a terminating pod instead of waiting for it"
        release(env, name)
        new = await asyncio.wait_for(creating, 60)
        assert new["pod_uid"] != state["pod_uid"]
        pod = read(env, "pod", name)
        assert pod is not None and pod["metadata"]["uid"] == new["pod_uid"]
        assert not pod["metadata"].get("deletionTimestamp")
        assert pod["metadata"]["labels"][LABEL_DEPLOYMENT] == deployment_id
        # The secret is the new pod's (the old pod's was replaced, not left for the garbage
        # collector to delete under the new pod).
        secret = read(env, "secret", name)
        assert secret is not None
        assert [r["uid"] for r in secret["metadata"]["ownerReferences"]] == [new["pod_uid"]]
        state = new
    finally:
        try:
            release(env, name)
        except client.ApiException:
            pass
        await backend.delete(spec.uid, state)
        await backend.close()
        await impatient.close()

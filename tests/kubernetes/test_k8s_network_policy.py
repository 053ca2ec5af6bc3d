"""Session pods accept the portal alone: the NetworkPolicy of each instance, as the real API
server stores it.

The harness's network (pods are processes on loopback IPs) enforces no NetworkPolicy, so
these tests check the stored objects exactly and decide reachability from them with
``tests/kubernetes/netpol_eval.py`` (the API reference's semantics): another session, or a
pod in another namespace carrying the portal's labels, cannot connect; the portal can.
On a cluster whose network plugin enforces policies the same objects are what it applies.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kubernetes import client

from spawners.base import LABEL_DEPLOYMENT, LABEL_INSTANCE, ResourceState
from spawners.k8s_manifests import make_pod_network_policy, object_name
from spawners.k8s_network import NetworkOptions
from tests.kubernetes.k8s_helpers import Checkpoints, read, sleeper
from tests.kubernetes.netpol_eval import Endpoint, egress_allowed, ingress_allowed

if TYPE_CHECKING:
    from tests.kubernetes.conftest import K8sEnv

PORTAL = {"app.kubernetes.io/name": "atrium", "app.kubernetes.io/component": "portal"}
# The harness's portal runs on the host (127.0.0.1), outside the "cluster": an ipBlock.
NETWORK = NetworkOptions(portal_pods=PORTAL, portal_cidrs=("127.0.0.1/32",),
                         egress_cidrs=("10.20.0.0/16",),
                         flavour_egress={"small": ("10.30.0.0/24:443",)},
                         instrument_egress={"LOKI": ("10.40.0.0/24",)})


def policies(env: K8sEnv, selector: str) -> list[dict[str, Any]]:
    api = client.NetworkingV1Api(env.api_client)
    return list(json.loads(api.list_namespaced_network_policy(
        env.namespace, label_selector=selector, _preload_content=False).data)["items"])


def read_policy(env: K8sEnv, name: str) -> dict[str, Any] | None:
    api = client.NetworkingV1Api(env.api_client)
    try:
        return dict(json.loads(api.read_namespaced_network_policy(
            name, env.namespace, _preload_content=False).data))
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def test_each_session_admits_the_portal_alone(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any
        ) -> None:
    env = k8s_cluster
    options = replace(sleeper(backend_factory(deployment_id).settings.pod), network=NETWORK)
    backend = backend_factory(deployment_id, pod=options)
    mine = make_spec(protocols=("jupyter",), instruments=("LOKI",))
    other = make_spec(protocols=("jupyter",), flavour_ref="large")
    states = {}
    try:
        for spec in (mine, other):
            states[spec.uid] = await backend.create(spec, Checkpoints())
        name = object_name(mine.uid)
        stored = read_policy(env, name)
        pod = read(env, "pod", name)
        assert stored is not None and pod is not None
        # Exactly what Atrium asked for, as the API server keeps it.
        expected = make_pod_network_policy(mine, deployment_id, env.namespace, options)
        assert stored["spec"] == expected["spec"] == {
            "podSelector": {"matchLabels": {LABEL_INSTANCE: mine.uid,
                                            LABEL_DEPLOYMENT: deployment_id}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": PORTAL}},
                                  {"ipBlock": {"cidr": "127.0.0.1/32"}}],
                         "ports": [{"protocol": "TCP", "port": 8888}]}],
            "egress": [
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
                {"to": [{"ipBlock": {"cidr": "10.30.0.0/24"}}],
                 "ports": [{"protocol": "TCP", "port": 443}]},
                {"to": [{"ipBlock": {"cidr": "10.40.0.0/24"}}]}]}
        assert stored["metadata"]["labels"] == {LABEL_INSTANCE: mine.uid,
                                                LABEL_DEPLOYMENT: deployment_id}
        # Owned by the pod: garbage-collected with it, like the secret.
        [owner] = stored["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("Pod", pod["metadata"]["uid"])
        assert states[mine.uid]["network_policy"] == name
        # What the stored policies mean, for the pods as they run.
        every = policies(env, f"{LABEL_DEPLOYMENT}={deployment_id}")
        assert {p["metadata"]["name"] for p in every} >= {name, object_name(other.uid)}
        other_pod = read(env, "pod", object_name(other.uid))
        assert other_pod is not None

        def endpoint(p: dict[str, Any]) -> Endpoint:
            return Endpoint(p["status"].get("podIP") or "127.0.9.9", env.namespace,
                            p["metadata"]["labels"])

        target, neighbour = endpoint(pod), endpoint(other_pod)
        portal_host = Endpoint("127.0.0.1", is_pod=False)
        portal_pod = Endpoint("127.0.8.8", env.namespace, PORTAL)
        impostor = Endpoint("127.0.8.9", "elsewhere", PORTAL, {"team": "elsewhere"})
        assert ingress_allowed(every, target, portal_host, 8888)
        assert ingress_allowed(every, target, portal_pod, 8888)
        assert not ingress_allowed(every, target, portal_host, 6080)  # no desktop here
        assert not ingress_allowed(every, target, neighbour, 8888)
        assert not ingress_allowed(every, neighbour, target, 8888)
        assert not ingress_allowed(every, target, impostor, 8888)
        assert not egress_allowed(every, target, neighbour, 8888)
        assert egress_allowed(every, target, Endpoint("10.40.0.9", is_pod=False), 5432)
        assert not egress_allowed(every, neighbour, Endpoint("10.40.0.9", is_pod=False), 5432)
        # Deleting the instance deletes its policy (after the pod).
        await backend.delete(mine.uid, states.pop(mine.uid))
        assert read_policy(env, name) is None and read(env, "pod", name) is None
        assert read_policy(env, object_name(other.uid)) is not None
    finally:
        for uid, state in states.items():
            await backend.delete(uid, state)
        await backend.close()


async def test_a_leftover_policy_is_found_and_removed_by_reconcile(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any
        ) -> None:
    """A crash between creating the policy and the pod leaves a policy alone."""
    env = k8s_cluster
    backend = backend_factory(deployment_id, leftover_grace_s=0)
    spec = make_spec()
    api = client.NetworkingV1Api(env.api_client)
    api.create_namespaced_network_policy(env.namespace, make_pod_network_policy(
        spec, deployment_id, env.namespace, backend.settings.pod), _preload_content=False)
    try:
        managed = await backend.list_managed()
        assert managed[spec.uid].state is ResourceState.GONE
        assert "network policy" in managed[spec.uid].reason
        await backend.delete(spec.uid, managed[spec.uid].backend_state)
        assert read_policy(env, object_name(spec.uid)) is None
        assert spec.uid not in await backend.list_managed()
    finally:
        await backend.delete(spec.uid, {})
        await backend.close()


async def test_a_changed_configuration_updates_the_policy_of_a_relaunched_instance(
        k8s_cluster: K8sEnv, backend_factory: Any, deployment_id: str, make_spec: Any
        ) -> None:
    env = k8s_cluster
    base = sleeper(backend_factory(deployment_id).settings.pod)
    spec = make_spec()
    old = replace(NETWORK, egress_cidrs=("10.99.0.0/16",))
    backend = backend_factory(deployment_id, pod=replace(base, network=old))
    api = client.NetworkingV1Api(env.api_client)
    # A policy left with an old configuration (a create that crashed) is brought up to date.
    api.create_namespaced_network_policy(env.namespace, make_pod_network_policy(
        spec, deployment_id, env.namespace, replace(base, network=old)), _preload_content=False)
    await backend.close()
    backend = backend_factory(deployment_id, pod=replace(base, network=NETWORK))
    state: dict[str, Any] = {}
    try:
        state = await backend.create(spec, Checkpoints())
        stored = read_policy(env, object_name(spec.uid))
        assert stored is not None
        assert stored["spec"] == make_pod_network_policy(
            spec, deployment_id, env.namespace, replace(base, network=NETWORK))["spec"]
        assert {"ipBlock": {"cidr": "10.99.0.0/16"}} not in [
            peer for rule in stored["spec"]["egress"] for peer in rule.get("to", [])]
    finally:
        await backend.delete(spec.uid, state)
        await backend.close()


async def test_without_policy_none_is_made(k8s_cluster: K8sEnv, backend_factory: Any,
                                           deployment_id: str, make_spec: Any) -> None:
    base = sleeper(backend_factory(deployment_id).settings.pod)
    backend = backend_factory(deployment_id,
                              pod=replace(base, network=NetworkOptions(policy=False)))
    spec = make_spec()
    state: dict[str, Any] = {}
    try:
        state = await backend.create(spec, Checkpoints())
        assert "network_policy" not in state
        assert read_policy(k8s_cluster, object_name(spec.uid)) is None
    finally:
        await backend.delete(spec.uid, state)
        await backend.close()

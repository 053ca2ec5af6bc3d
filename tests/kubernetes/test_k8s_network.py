"""The NetworkPolicy builder and the ``network`` configuration (pure: no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from spawners.base import LABEL_DEPLOYMENT, LABEL_INSTANCE, InstanceSpec, Owner
from spawners.k8s_config import pod_options_from_mapping
from spawners.k8s_manifests import PodOptions, make_pod_network_policy, object_name
from spawners.k8s_network import NetworkOptions, network_options_from_mapping
from tests.kubernetes.netpol_eval import Endpoint, egress_allowed, ingress_allowed

UID = "0123456789abcdef0123456789abcdef"
NS = "sessions"


def spec(**kwargs: Any) -> InstanceSpec:
    values: dict[str, Any] = {
        "uid": UID, "name": "n", "image_ref": "img", "flavour_ref": "small",
        "protocols": ("jupyter", "desktop"), "owner": Owner("alice"),
        "instruments": ("LOKI",)}
    values.update(kwargs)
    return InstanceSpec(**values)


NETWORK = network_options_from_mapping({
    "portal_pods": {"app.kubernetes.io/name": "atrium", "app.kubernetes.io/component": "portal"},
    "portal_namespaces": {"atrium/portal": "yes"},
    "portal_cidrs": ["192.0.2.10/32"],
    "egress_cidrs": ["10.20.0.0/16"],
    "flavour_egress": {"small": ["10.30.0.10/32:27000"], "large": ["10.31.0.0/24"]},
    "instrument_egress": {"LOKI": ["10.40.0.0/24"], "ODIN": ["10.41.0.0/24"]},
})


def test_the_policy_admits_the_portal_on_the_session_ports_only() -> None:
    policy = make_pod_network_policy(spec(), "dep", NS, PodOptions(network=NETWORK))
    assert policy == {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {
            "name": object_name(UID), "namespace": NS,
            "labels": {LABEL_INSTANCE: UID, LABEL_DEPLOYMENT: "dep"},
            "annotations": policy["metadata"]["annotations"]},
        "spec": {
            "podSelector": {"matchLabels": {LABEL_INSTANCE: UID, LABEL_DEPLOYMENT: "dep"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [
                    {"podSelector": {"matchLabels": {
                        "app.kubernetes.io/name": "atrium",
                        "app.kubernetes.io/component": "portal"}},
                     "namespaceSelector": {"matchLabels": {"atrium/portal": "yes"}}},
                    {"ipBlock": {"cidr": "192.0.2.10/32"}}],
                "ports": [{"protocol": "TCP", "port": 8888}, {"protocol": "TCP", "port": 6080}],
            }],
            "egress": [
                {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
                {"to": [{"ipBlock": {"cidr": "10.30.0.10/32"}}],
                 "ports": [{"protocol": "TCP", "port": 27000}]},
                {"to": [{"ipBlock": {"cidr": "10.40.0.0/24"}}]},
            ],
        },
    }
    # A JupyterLab-only session opens 8888 alone; no flavour/instrument entries: DNS + all.
    lab = make_pod_network_policy(spec(protocols=("jupyter",), flavour_ref="other",
                                       instruments=()), "dep", NS, PodOptions(network=NETWORK))
    assert lab["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8888}]
    assert [r.get("to") for r in lab["spec"]["egress"]] == [
        None, [{"ipBlock": {"cidr": "10.20.0.0/16"}}]]


def test_what_the_policy_means() -> None:
    policy = make_pod_network_policy(spec(), "dep", NS, PodOptions(network=NETWORK))
    labels = policy["spec"]["podSelector"]["matchLabels"]
    session = Endpoint("10.0.0.5", NS, labels)
    portal = Endpoint("10.0.1.2", "atrium", {"app.kubernetes.io/name": "atrium",
                                             "app.kubernetes.io/component": "portal"},
                      {"atrium/portal": "yes"})
    other_session = Endpoint("10.0.0.6", NS, {LABEL_INSTANCE: "other", LABEL_DEPLOYMENT: "dep"})
    impostor = Endpoint("10.0.2.2", "evil", dict(portal.labels), {"team": "evil"})
    assert ingress_allowed([policy], session, portal, 8888)
    assert ingress_allowed([policy], session, portal, 6080)
    assert not ingress_allowed([policy], session, portal, 22)
    assert not ingress_allowed([policy], session, other_session, 8888)
    assert not ingress_allowed([policy], session, impostor, 8888)
    outside = Endpoint("192.0.2.10", is_pod=False)
    assert ingress_allowed([policy], session, outside, 8888)
    assert not ingress_allowed([policy], session, Endpoint("192.0.2.11", is_pod=False), 8888)
    assert egress_allowed([policy], session, Endpoint("10.96.0.10", is_pod=False), 53, "UDP")
    assert egress_allowed([policy], session, Endpoint("10.40.0.7", is_pod=False), 443)
    assert egress_allowed([policy], session, Endpoint("10.30.0.10", is_pod=False), 27000)
    assert not egress_allowed([policy], session, Endpoint("10.30.0.10", is_pod=False), 22)
    assert not egress_allowed([policy], session, Endpoint("10.41.0.7", is_pod=False), 443)
    assert not egress_allowed([policy], session, Endpoint("203.0.113.9", is_pod=False), 443)
    assert not egress_allowed([policy], session, portal, 8000)  # no way back to the portal


def test_defaults_and_switching_off() -> None:
    default = make_pod_network_policy(spec(), "dep", NS, PodOptions())
    assert default["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "atrium", "app.kubernetes.io/component": "portal"}}}]
    assert pod_options_from_mapping({"network": {"policy": False}}).network.policy is False
    assert pod_options_from_mapping({}).network == NetworkOptions()


@pytest.mark.parametrize("network, words", [
    ({"portal_pods": {}, "portal_cidrs": []}, "name the portal"),
    ({"portal_cidrs": ["10.0.0.1/8"]}, "network.portal_cidrs: '10.0.0.1/8' is not a CIDR"),
    ({"portal_cidrs": ["10.0.0.0/8:80"]}, "is not a CIDR"),
    ({"egress_cidrs": ["10.0.0.0/8:99999"]}, "the port must be 1-65535"),
    ({"egress_cidrs": "10.0.0.0/8"}, "expected a list of CIDRs"),
    ({"flavour_egress": {"x": ["nope"]}}, "network.flavour_egress.x: 'nope' is not a CIDR"),
    ({"portal_pods": {"a": 1}}, "network.portal_pods: expected a mapping"),
    ({"policy": "yes"}, "network.policy: expected true or false"),
    ({"ingress": []}, "network: unknown keys ingress"),
])
def test_bad_network_settings_name_the_key(network: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError) as err:
        pod_options_from_mapping({"network": network})
    assert words in str(err.value)

"""Kubernetes NetworkPolicy semantics, for tests: may a connection reach a pod?

The harness's kubelet double runs pods as processes on loopback and its network enforces
no policy, so the tests read the policies *as the API server stores them* and decide here,
following the API reference (networking.k8s.io/v1):

* a pod selected by no policy of a type is open in that direction; once selected, only
  what some rule of some selecting policy allows passes (rules and policies add up);
* a peer with ``podSelector`` alone means pods of the policy's namespace; with
  ``namespaceSelector`` alone, every pod of the matching namespaces; with both, the
  matching pods of the matching namespaces; ``ipBlock`` matches the source address
  (minus ``except``), and per the reference is meant for traffic from outside the cluster;
* an empty ``from``/``ports`` list (or absent) matches everything.

Only ``matchLabels`` selectors are modelled (Atrium writes nothing else); anything else
fails loudly rather than being guessed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (labels, namespace and its labels) or an outside address (pod is None)."""

    ip: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    is_pod: bool = True


def _matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    selector = selector or {}
    unsupported = set(selector) - {"matchLabels"}
    if unsupported:
        raise NotImplementedError(f"selector fields {sorted(unsupported)}")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: Mapping[str, Any], policy_ns: str, source: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(source.ip)
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(e) for e in block.get("except") or [])
    if not source.is_pod:
        return False
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_ns:
        return False
    return "podSelector" not in peer or _matches(peer["podSelector"], source.labels)


def _port_matches(ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str
                  ) -> bool:
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port)
               for p in ports)


def ingress_allowed(policies: Sequence[Mapping[str, Any]], target: Endpoint,
                    source: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """May ``source`` open a connection to ``target``:``port`` under ``policies``?"""
    selecting = [p for p in policies
                 if p["metadata"]["namespace"] == target.namespace
                 and "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])
                 and _matches(p["spec"].get("podSelector"), target.labels)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from") or []
            if (not peers or any(_peer_matches(peer, target.namespace, source)
                                 for peer in peers)) and _port_matches(
                    rule.get("ports"), port, protocol):
                return True
    return False


def egress_allowed(policies: Sequence[Mapping[str, Any]], source: Endpoint,
                   destination: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """May ``source`` open a connection to ``destination``:``port`` under ``policies``?"""
    selecting = [p for p in policies
                 if p["metadata"]["namespace"] == source.namespace
                 and "Egress" in (p["spec"].get("policyTypes") or [])
                 and _matches(p["spec"].get("podSelector"), source.labels)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to") or []
            if (not peers or any(_peer_matches(peer, source.namespace, destination)
                                 for peer in peers)) and _port_matches(
                    rule.get("ports"), port, protocol):
                return True
    return False

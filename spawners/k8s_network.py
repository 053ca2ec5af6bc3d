"""Network isolation of session pods: the NetworkPolicy of one instance (pure builder).

A session runs code its owner (and USER members) control, so its pod accepts connections
from the portal alone, on the ports of the protocols it serves: not from other sessions,
not from other namespaces. Egress is closed except DNS and what the admin opens, for
every session or per flavour and per instrument (the instruments of the instance's
experiments), e.g. a licence server or the facility's data catalogue.

One policy per instance (name, labels and annotations of the pod; owned by the pod like
the Secret, so the garbage collector removes it with the pod), created *before* the pod:
a session pod never exists unprotected, and each policy carries exactly its instance's
egress. The cluster's network plugin must enforce NetworkPolicy (Calico, Cilium, ...).

Configured in the pod configuration file (``ATRIUM_K8S_POD_CONFIG``), section ``network``::

    network:
      policy: true                  # false: Atrium creates no policy (the site's own rules)
      portal_pods: {app.kubernetes.io/name: atrium, app.kubernetes.io/component: portal}
      portal_namespaces: {}         # namespaceSelector matchLabels of the portal's namespace;
                                    # absent/empty: the sessions' own namespace
      portal_cidrs: []              # ipBlocks: a portal outside the cluster (its egress IPs)
      egress_dns: true              # UDP+TCP 53 to anywhere (the cluster's resolver)
      egress_cidrs: []              # open to every session, e.g. [10.20.0.0/16]
      flavour_egress: {large-gpu: [10.30.0.10/32]}   # flavour's kubernetes ref -> CIDRs
      instrument_egress: {LOKI: [10.40.0.0/24]}      # instrument name -> CIDRs

CIDR entries may name ports: ``10.30.0.10/32:27000`` opens that port only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spawners.base import InstanceSpec

Manifest = dict[str, Any]

DEFAULT_PORTAL_PODS: Mapping[str, str] = {
    "app.kubernetes.io/name": "atrium", "app.kubernetes.io/component": "portal"}
_KEYS = ("policy", "portal_pods", "portal_namespaces", "portal_cidrs", "egress_dns",
         "egress_cidrs", "flavour_egress", "instrument_egress")


@dataclass(frozen=True)
class NetworkOptions:
    """Who may reach session pods, and where they may go (see the module docstring)."""

    policy: bool = True
    portal_pods: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PORTAL_PODS))
    portal_namespaces: Mapping[str, str] = field(default_factory=dict)
    portal_cidrs: tuple[str, ...] = ()
    egress_dns: bool = True
    egress_cidrs: tuple[str, ...] = ()
    flavour_egress: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    instrument_egress: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def session_ports(protocols: Sequence[str], ports: Mapping[str, int]) -> list[Manifest]:
    """The TCP ports of the protocols a session serves (``ports``: protocol -> port)."""
    return [{"protocol": "TCP", "port": ports[p]} for p in protocols if p in ports]


def _egress_rule(entry: str) -> Manifest:
    """``CIDR`` or ``CIDR:port`` -> one egress rule."""
    cidr, _, port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
    rule: Manifest = {"to": [{"ipBlock": {"cidr": cidr}}]}
    if port:
        rule["ports"] = [{"protocol": "TCP", "port": int(port)}]
    return rule


def egress_entries(spec: InstanceSpec, options: NetworkOptions) -> list[str]:
    """The CIDR entries open to this instance: everyone's, its flavour's, its
    instruments', in that order, without repeats."""
    entries = [*options.egress_cidrs, *options.flavour_egress.get(spec.flavour_ref, ())]
    for instrument in spec.instruments:
        entries.extend(options.instrument_egress.get(instrument, ()))
    return list(dict.fromkeys(entries))


def make_network_policy(spec: InstanceSpec, metadata: Manifest, selector: Mapping[str, str],
                        options: NetworkOptions, ports: Mapping[str, int]) -> Manifest:
    """The NetworkPolicy of one session pod (``metadata``: the pod's; ``selector``: its
    labels). Ingress: the portal's pods/namespaces and CIDRs, on the session ports only.
    Egress: DNS (unless turned off) and :func:`egress_entries`."""
    peers: list[Manifest] = []
    if options.portal_pods or options.portal_namespaces:
        peer: Manifest = {}
        if options.portal_pods:
            peer["podSelector"] = {"matchLabels": dict(options.portal_pods)}
        if options.portal_namespaces:
            peer["namespaceSelector"] = {"matchLabels": dict(options.portal_namespaces)}
        peers.append(peer)
    peers.extend({"ipBlock": {"cidr": cidr}} for cidr in options.portal_cidrs)
    egress: list[Manifest] = []
    if options.egress_dns:
        egress.append({"ports": [{"protocol": "UDP", "port": 53},
                                 {"protocol": "TCP", "port": 53}]})
    egress.extend(_egress_rule(entry) for entry in egress_entries(spec, options))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": peers, "ports": session_ports(spec.protocols, ports)}],
            "egress": egress,
        },
    }


# --------------------------------------------------------------------------- parsing


def _labels(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()):
        raise ValueError(f"network.{key}: expected a mapping of label names to values")
    return dict(value)


def _cidr_entry(value: Any, key: str, with_port: bool) -> str:
    text = str(value).strip() if isinstance(value, str) else ""
    cidr, port = text, ""
    if with_port and text.count(":") == 1:
        cidr, port = text.split(":")
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        raise ValueError(f"network.{key}: {value!r} is not a CIDR (e.g. 10.0.0.0/24"
                         + (", optionally :port" if with_port else "") + ")") from None
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"network.{key}: {value!r}: the port must be 1-65535")
    return f"{network}:{port}" if port else str(network)


def _cidrs(value: Any, key: str, with_port: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"network.{key}: expected a list of CIDRs")
    return tuple(_cidr_entry(v, key, with_port) for v in value)


def _cidr_map(value: Any, key: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ValueError(f"network.{key}: expected a mapping of names to lists of CIDRs")
    return {str(k): _cidrs(v, f"{key}.{k}") for k, v in value.items()}


def network_options_from_mapping(data: Any) -> NetworkOptions:
    """NetworkOptions from the ``network`` section; ValueError names the key."""
    if not isinstance(data, dict):
        raise ValueError("network: expected a mapping")
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ValueError(f"network: unknown keys {', '.join(unknown)} (expected among "
                         f"{', '.join(_KEYS)})")
    values: dict[str, Any] = {}
    for key in ("policy", "egress_dns"):
        if key in data:
            if not isinstance(data[key], bool):
                raise ValueError(f"network.{key}: expected true or false")
            values[key] = data[key]
    for key in ("portal_pods", "portal_namespaces"):
        if key in data:
            values[key] = _labels(data[key] or {}, key)
    if "portal_cidrs" in data:
        values["portal_cidrs"] = _cidrs(data["portal_cidrs"], "portal_cidrs", with_port=False)
    if "egress_cidrs" in data:
        values["egress_cidrs"] = _cidrs(data["egress_cidrs"], "egress_cidrs")
    for key in ("flavour_egress", "instrument_egress"):
        if key in data:
            values[key] = _cidr_map(data[key], key)
    options = NetworkOptions(**values)
    if options.policy and not (options.portal_pods or options.portal_namespaces
                               or options.portal_cidrs):
        raise ValueError("network: with policy on, name the portal (portal_pods, "
                         "portal_namespaces or portal_cidrs), else nothing could reach "
                         "the sessions")
    return options

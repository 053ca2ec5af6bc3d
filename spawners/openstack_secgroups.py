"""The security group of one OpenStack session: the portal's addresses on its session ports.

Every server gets its own Neutron security group, ``atrium-<uid>``, created *before* the
server (a session is never reachable but from the portal) and holding exactly one ingress
rule per (portal CIDR, session port): JupyterLab's port when the session runs JupyterLab,
the desktop's (RFB) when it runs a desktop. Nothing else comes in: not other sessions of
the project (unlike Neutron's ``default`` group), not the internet. Egress: one rule per
configured CIDR (default: everything, as Neutron's own default, so the VM reaches its
data mounts and package mirrors; narrow it and open more with the admin's groups per
deployment, flavour, instrument and protocol, which are added to the server beside it).

Found again by tags (``atrium-instance=<uid>``, ``atrium-deployment=<id>``, as servers are)
and by name; deleted after the server (Neutron refuses to delete a group still in use).
:func:`wanted_rules` is pure; the other functions block (run them in the backend's pool).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from openstack import exceptions as os_exc

log = logging.getLogger(__name__)

# (direction, ethertype, protocol, port min, port max, remote CIDR); "" / 0 for "any"
Rule = tuple[str, str, str, int, int, str]
ANY = {"IPv4": "0.0.0.0/0", "IPv6": "::/0"}


def group_name(uid: str) -> str:
    return f"atrium-{uid}"


def wanted_rules(portal_cidrs: Sequence[str], ports: Iterable[int],
                 egress_cidrs: Sequence[str] = ("0.0.0.0/0", "::/0")) -> set[Rule]:
    """The rules of a session's group: each portal CIDR on each session port (TCP) in;
    each egress CIDR out (any protocol). ValueError for a malformed CIDR."""
    rules: set[Rule] = set()
    ports = list(ports)
    for cidr in portal_cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        for port in ports:
            rules.add(("ingress", f"IPv{network.version}", "tcp", port, port, str(network)))
    for cidr in egress_cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        rules.add(("egress", f"IPv{network.version}", "", 0, 0, str(network)))
    return rules


def rule_of(rule: Any) -> Rule:
    """A Neutron rule as a :data:`Rule` (no remote prefix = anywhere)."""
    ethertype = str(rule.ether_type)
    return (str(rule.direction), ethertype, str(rule.protocol or ""),
            int(rule.port_range_min or 0), int(rule.port_range_max or 0),
            str(rule.remote_ip_prefix or ANY.get(ethertype, "")))


def find_groups(conn: Any, uid: str, instance_tag: str, deployment_tag: str) -> list[Any]:
    """The groups of ``uid`` in this deployment: tagged, or named and described so (a crash
    between creating a group and tagging it leaves the name and description)."""
    tagged = list(conn.network.security_groups(tags=f"{instance_tag},{deployment_tag}"))
    named = [g for g in conn.network.security_groups(name=group_name(uid))
             if deployment_tag in (g.description or "").split()]
    return list({g.id: g for g in [*tagged, *named]}.values())


def ensure_group(conn: Any, uid: str, instance_tag: str, deployment_tag: str,
                 rules: set[Rule]) -> str:
    """Create (or adopt) the group of ``uid`` and make its rules exactly ``rules``; return
    its id. Idempotent."""
    found = find_groups(conn, uid, instance_tag, deployment_tag)
    if found:
        group = found[0]
    else:
        group = conn.network.create_security_group(
            name=group_name(uid),
            description=f"Atrium session: the portal only. {instance_tag} {deployment_tag}")
    if set(group.tags or []) != {instance_tag, deployment_tag}:
        conn.network.set_tags(group, [instance_tag, deployment_tag])
    have: dict[Rule, list[Any]] = {}
    for rule in conn.network.security_group_rules(security_group_id=group.id):
        if rule.remote_group_id:  # "from members of group X": never ours
            conn.network.delete_security_group_rule(rule, ignore_missing=True)
            continue
        have.setdefault(rule_of(rule), []).append(rule)
    for key, extra in have.items():
        for rule in extra[0 if key not in rules else 1:]:  # unwanted, or a duplicate
            conn.network.delete_security_group_rule(rule, ignore_missing=True)
    for direction, ethertype, protocol, low, high, remote in sorted(rules - set(have)):
        conn.network.create_security_group_rule(
            security_group_id=group.id, direction=direction, ethertype=ethertype,
            protocol=protocol or None, port_range_min=low or None,
            port_range_max=high or None, remote_ip_prefix=remote,
            description="Atrium portal" if direction == "ingress" else "Atrium egress")
    return str(group.id)


def delete_groups(conn: Any, uid: str, instance_tag: str, deployment_tag: str,
                  wait: float = 30.0) -> None:
    """Delete the groups of ``uid`` (its server is gone). Neutron answers 409 while a port
    still uses one (Nova deletes the server's ports just after the server): retried."""
    deadline = time.monotonic() + wait
    for group in find_groups(conn, uid, instance_tag, deployment_tag):
        while True:
            try:
                conn.network.delete_security_group(group, ignore_missing=True)
                break
            except os_exc.ConflictException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def leftover_uids(conn: Any, deployment_tag: str, instance_prefix: str,
                  older_than: float) -> dict[str, str]:
    """uid -> group id of this deployment's groups older than ``older_than`` seconds (a
    younger one may belong to a create in progress)."""
    found = {}
    now = time.time()
    for group in conn.network.security_groups(tags=deployment_tag):
        uid = next((t[len(instance_prefix):] for t in group.tags or []
                    if t.startswith(instance_prefix)), "")
        created = _epoch(getattr(group, "created_at", None))
        if uid and (created is None or now - created >= older_than):
            found[uid] = str(group.id)
    return found


def _epoch(value: Any) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

"""Each OpenStack session server gets its own security group, admitting the portal's address
on its session ports and nothing else (plus the admin's groups per flavour and instrument),
read back from the real Neutron and Nova of the harness.

The harness's Neutron stores and serves the rules but its firewall driver is ``noop`` (no
hypervisor, no iptables): the tests assert the rules Neutron holds for the server's port,
which is what a real firewall driver applies.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

import pytest

from spawners import openstack_secgroups as secgroups
from spawners.base import ResourceState
from spawners.openstack import tag
from tests.harness.openstack.bootstrap import CloudSettings
from tests.openstack.helpers import Checkpoints, make_backend, make_spec, wait_for

pytestmark = pytest.mark.timeout(240)

PORTAL = "127.0.0.1/32"  # the harness's portal (the test process) runs on the host


def rules_of(conn: Any, group_id: str) -> set[tuple[Any, ...]]:
    """(direction, ethertype, protocol, ports, remote prefix, remote group) of every rule
    Neutron holds for the group (no prefix: anywhere)."""
    anywhere = {"IPv4": "0.0.0.0/0", "IPv6": "::/0"}
    return {(r.direction, r.ether_type, r.protocol, r.port_range_min, r.port_range_max,
             r.remote_ip_prefix or anywhere[r.ether_type], r.remote_group_id)
            for r in conn.network.security_group_rules(security_group_id=group_id)}


def port_groups(conn: Any, server_id: str) -> list[Any]:
    """The security groups Neutron applies to the server's ports."""
    ids = {g for port in conn.network.ports(device_id=server_id)
           for g in port.security_group_ids}
    return sorted((conn.network.get_security_group(g) for g in ids), key=lambda g: g.name)


async def test_a_session_admits_the_portal_alone_on_its_ports(
        openstack_cloud: CloudSettings) -> None:
    cloud = openstack_cloud
    uid = f"sg-{secrets.token_hex(3)}"
    with cloud.connect() as conn:
        licence = conn.network.create_security_group(name=f"licence-{uid}",
                                                     description="LOKI licence server")
    backend = make_backend(cloud, f"test-{secrets.token_hex(3)}", security_groups=[],
                           portal_cidrs=[PORTAL],
                           flavour_security_groups={"atrium.small": [cloud.security_group]},
                           instrument_security_groups={"LOKI": [licence.name]})
    spec = replace(make_spec(cloud, uid), instruments=("LOKI",))
    state: dict[str, Any] = {}
    try:
        state = await backend.create(spec, Checkpoints())
        await wait_for(backend, spec, state, ResourceState.RUNNING, timeout=90)
        with cloud.connect() as conn:
            groups = port_groups(conn, state["server_id"])
            assert [g.name for g in groups] == [
                cloud.security_group, f"atrium-{uid}", f"licence-{uid}"]
            own = groups[1]
            # Exactly: the portal's address on JupyterLab's port in; anything out (the
            # default, as Neutron's own).
            assert rules_of(conn, own.id) == {
                ("ingress", "IPv4", "tcp", 8888, 8888, PORTAL, None),
                ("egress", "IPv4", None, None, None, "0.0.0.0/0", None),
                ("egress", "IPv6", None, None, None, "::/0", None)}
            assert set(own.tags) == {tag("atrium/instance", uid), backend.deployment_tag}
            # Nova agrees on what the server carries.
            server = conn.compute.get_server(state["server_id"])
            assert sorted(g["name"] for g in server.security_groups) == sorted(
                g.name for g in groups)
        await backend.delete(spec.uid, state)
        state = {}
        with cloud.connect() as conn:
            assert list(conn.network.security_groups(name=f"atrium-{uid}")) == []
            # The admin's groups are the admin's: left alone.
            assert conn.network.get_security_group(licence.id) is not None
    finally:
        if state:
            await backend.delete(spec.uid, state)
        await backend.close()
        with cloud.connect() as conn:
            conn.network.delete_security_group(licence.id, ignore_missing=True)


async def test_a_desktop_session_opens_rfb_too_and_tampered_rules_are_reset(
        openstack_cloud: CloudSettings) -> None:
    """The group's rules are made exact whenever the session is created (a rule someone
    added, or a configuration that changed, does not survive a relaunch)."""
    cloud = openstack_cloud
    uid = f"sg-{secrets.token_hex(3)}"
    deployment = f"test-{secrets.token_hex(3)}"
    backend = make_backend(cloud, deployment, security_groups=[],
                           portal_cidrs=[PORTAL, "2001:db8::7/128"],
                           egress_cidrs=["10.20.0.0/16"])
    spec = make_spec(cloud, uid, protocols=("jupyter", "desktop"))
    instance_tag = tag("atrium/instance", uid)
    with cloud.connect() as conn:
        group_id = secgroups.ensure_group(conn, uid, instance_tag, backend.deployment_tag,
                                          {("ingress", "IPv4", "tcp", 22, 22, "0.0.0.0/0")})
        # Someone opens the group to the rest of the project: a rule Atrium never makes.
        conn.network.create_security_group_rule(
            security_group_id=group_id, direction="ingress", ethertype="IPv4",
            remote_group_id=group_id)
    try:
        state = await backend.create(spec, Checkpoints())
        await wait_for(backend, spec, state, ResourceState.RUNNING, timeout=90)
        with cloud.connect() as conn:
            assert rules_of(conn, group_id) == {
                ("ingress", "IPv4", "tcp", 8888, 8888, PORTAL, None),
                ("ingress", "IPv4", "tcp", 6080, 6080, PORTAL, None),
                ("ingress", "IPv6", "tcp", 8888, 8888, "2001:db8::7/128", None),
                ("ingress", "IPv6", "tcp", 6080, 6080, "2001:db8::7/128", None),
                ("egress", "IPv4", None, None, None, "10.20.0.0/16", None)}
            assert [g.id for g in port_groups(conn, state["server_id"])] == [group_id]
        await backend.delete(spec.uid, state)
    finally:
        await backend.delete(spec.uid, {})
        await backend.close()


async def test_a_leftover_group_is_found_and_removed_by_reconcile(
        openstack_cloud: CloudSettings) -> None:
    """A crash between creating the group and the server leaves a tagged group alone."""
    cloud = openstack_cloud
    uid = f"sg-{secrets.token_hex(3)}"
    backend = make_backend(cloud, f"test-{secrets.token_hex(3)}", leftover_grace=0)
    patient = make_backend(cloud, backend.deployment_tag.split("=", 1)[1])
    with cloud.connect() as conn:
        secgroups.ensure_group(conn, uid, tag("atrium/instance", uid), backend.deployment_tag,
                               secgroups.wanted_rules([PORTAL], [8888]))
    try:
        assert uid not in await patient.list_managed()  # young: maybe a create under way
        managed = await backend.list_managed()
        assert managed[uid].state is ResourceState.GONE
        assert "security group" in managed[uid].reason
        await backend.delete(uid, managed[uid].backend_state)
        assert uid not in await backend.list_managed()
        with cloud.connect() as conn:
            assert list(conn.network.security_groups(name=f"atrium-{uid}")) == []
    finally:
        await backend.close()
        await patient.close()

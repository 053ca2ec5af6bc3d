"""The OpenStack backend against real Keystone/Glance/Placement/Neutron/Nova (see conftest).

Each test uses a backend of its own deployment id, so list_managed sees only its servers.
"""

from __future__ import annotations

import base64
import shutil
from dataclasses import replace

import pytest
import yaml

from spawners.base import BackendError, ResourceState
from spawners.openstack import OpenStackBackend
from tests.conftest import need
from tests.harness.openstack.bootstrap import CloudSettings
from tests.openstack.helpers import (
    Checkpoints,
    make_backend,
    make_spec,
    tagged_servers,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)


async def test_lifecycle(openstack_cloud: CloudSettings, backend: OpenStackBackend) -> None:
    spec = make_spec(openstack_cloud, "life-1")
    checkpoints = Checkpoints()
    state = await backend.create(spec, checkpoints)
    assert state["server_id"] and checkpoints.states[0] == {"server_id": state["server_id"]}

    # RUNNING with an endpoint on the server's fixed IP; the harness' compute driver runs
    # the user-data's JupyterLab on that IP, so the probe with the token succeeds
    seen = await wait_for(backend, spec, state, ResourceState.RUNNING, timeout=90,
                          ready="jupyter")
    address = seen.backend_state["address"]
    assert address.startswith("127.42.0.")
    assert seen.endpoints == {"jupyter": f"http://{address}:8888"}

    # the user-data Nova stored is ours: the owner, the mount read-only, this token only
    with openstack_cloud.connect(admin=True) as conn:
        server = conn.compute.get_server(state["server_id"])
        user_data = base64.b64decode(server.user_data).decode()
        assert server.metadata["atrium:instance"] == "life-1"
        assert set(server.tags) == {"atrium-instance=life-1", backend.deployment_tag}
    doc = yaml.safe_load(user_data)
    assert doc["atrium"]["owner"] == "alice"
    assert doc["atrium"]["mounts"] == [
        {"name": "20261234", "target": "/home/alice/data/20261234", "read_only": True}]
    assert "tok-life-1" in user_data

    state = await backend.stop(spec.uid, state)
    seen = await wait_for(backend, spec, state, ResourceState.STOPPED)
    assert seen.ready == frozenset()  # the driver killed JupyterLab with the "VM"

    state = await backend.start(spec, state, checkpoints)
    await wait_for(backend, spec, state, ResourceState.RUNNING)

    state = await backend.reboot(spec, state, checkpoints)
    await wait_for(backend, spec, state, ResourceState.RUNNING)

    await backend.delete(spec.uid, state)
    seen = await backend.observe(spec.uid, state, spec.secrets, spec.protocols)
    assert seen.state is ResourceState.GONE
    assert tagged_servers(openstack_cloud, spec.uid) == []
    await backend.delete(spec.uid, state)  # deleting what is gone succeeds


async def test_desktop_server_serves_rfb(openstack_cloud: CloudSettings,
                                         backend: OpenStackBackend) -> None:
    """The VM's desktop (images/desktop/start-desktop.sh, run by the harness driver)."""
    need(shutil.which("Xvnc") is not None, "no Xvnc (tigervnc) on this machine")
    spec = make_spec(openstack_cloud, "desk-1", protocols=("desktop",))
    state = await backend.create(spec, Checkpoints())
    seen = await wait_for(backend, spec, state, ResourceState.RUNNING, timeout=90,
                          ready="desktop")
    assert seen.endpoints == {"desktop": f"vnc://{seen.backend_state['address']}:6080"}
    await backend.delete(spec.uid, state)
    assert tagged_servers(openstack_cloud, spec.uid) == []


async def test_no_valid_host_fails_with_reason_and_leaks_nothing(
        openstack_cloud: CloudSettings, backend: OpenStackBackend) -> None:
    spec = make_spec(openstack_cloud, "big-1", big=True)
    state = await backend.create(spec, Checkpoints())
    seen = await wait_for(backend, spec, state, ResourceState.FAILED)
    assert "No valid host" in seen.reason
    assert seen.backend_state.get("capacity_error") is True
    assert seen.ready == frozenset()

    await backend.delete(spec.uid, state)
    assert tagged_servers(openstack_cloud, spec.uid) == []
    assert await backend.list_managed() == {}
    with openstack_cloud.connect(admin=True) as conn:
        assert list(conn.network.ports(device_id=state["server_id"])) == []


async def test_user_data_cloud_init_refuses_fails_the_server_with_the_checkers_reason(
        openstack_cloud: CloudSettings, backend: OpenStackBackend) -> None:
    """The harness boots like a VM: cloud-init's schema check runs first (a real VM would
    skip the broken modules; the harness refuses, so a template regression shows)."""
    spec = replace(make_spec(openstack_cloud, "bad-userdata-1"),
                   boot_template="#cloud-config\nruncmd: 5\nwrite_files: {path: 1}\n")
    state = await backend.create(spec, Checkpoints())
    seen = await wait_for(backend, spec, state, ResourceState.FAILED, timeout=90)
    assert "invalid user-data" in seen.reason, seen.reason
    await backend.delete(spec.uid, state)
    assert tagged_servers(openstack_cloud, spec.uid) == []


async def test_list_managed_finds_orphans_and_ignores_untagged(
        openstack_cloud: CloudSettings, backend: OpenStackBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with openstack_cloud.connect() as conn:
        common = {"image_id": openstack_cloud.image_id,
                  "flavor_id": openstack_cloud.flavour_id, "networks": "none"}
        # what a crashed Atrium leaves behind: tagged, but no live instance knows it
        orphan = conn.compute.create_server(
            name="orphan", tags=["atrium-instance=orphan-1", backend.deployment_tag],
            **common)
        foreign = conn.compute.create_server(name="not-atrium", **common)
        other_deployment = conn.compute.create_server(
            name="other", tags=["atrium-instance=orphan-2", "atrium-deployment=elsewhere"],
            **common)
    try:
        # through a clouds.yaml entry this time: the other way to configure the backend
        monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", openstack_cloud.clouds_yaml)
        by_name = OpenStackBackend(backend.deployment_id, cloud=openstack_cloud.cloud_name)
        try:
            managed = await by_name.list_managed()
        finally:
            await by_name.close()
        assert set(managed) == {"orphan-1"}
        assert managed["orphan-1"].backend_state["server_id"] == orphan.id

        await backend.delete("orphan-1", {})  # what reconcile does with an orphan
        assert await backend.list_managed() == {}
    finally:
        with openstack_cloud.connect() as conn:
            for server in (orphan, foreign, other_deployment):
                conn.compute.delete_server(server.id, ignore_missing=True)


async def test_create_is_idempotent(openstack_cloud: CloudSettings,
                                    backend: OpenStackBackend) -> None:
    spec = make_spec(openstack_cloud, "idem-1")
    first = await backend.create(spec, Checkpoints())
    # a second create right away (the server may still be building), as after a crash
    again = await backend.create(spec, Checkpoints())
    assert again["server_id"] == first["server_id"]
    # and once more through another backend object (another Atrium process)
    other = make_backend(openstack_cloud, backend.deployment_id)
    try:
        assert (await other.create(spec, Checkpoints()))["server_id"] == first["server_id"]
    finally:
        await other.close()
    assert [s.id for s in tagged_servers(openstack_cloud, spec.uid)] == [first["server_id"]]
    managed = await backend.list_managed()
    assert set(managed) == {"idem-1"}
    await backend.delete(spec.uid, first)
    assert tagged_servers(openstack_cloud, spec.uid) == []


async def test_server_deleted_behind_atriums_back_is_gone(
        openstack_cloud: CloudSettings, backend: OpenStackBackend) -> None:
    spec = make_spec(openstack_cloud, "vanish-1")
    state = await backend.create(spec, Checkpoints())
    await wait_for(backend, spec, state, ResourceState.RUNNING)
    with openstack_cloud.connect() as conn:  # someone else deletes it
        conn.compute.delete_server(state["server_id"])
        conn.compute.wait_for_delete(conn.compute.get_server(state["server_id"]), wait=60)
    seen = await backend.observe(spec.uid, state, spec.secrets, spec.protocols)
    assert seen.state is ResourceState.GONE
    assert await backend.list_managed() == {}
    with pytest.raises(BackendError, match="no longer exists"):
        await backend.start(spec, state, Checkpoints())
    await backend.delete(spec.uid, state)  # nothing to delete: still fine

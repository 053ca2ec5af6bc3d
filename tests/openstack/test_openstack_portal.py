"""OpenStack end to end through the portal: a real ``atrium serve`` on the harness cloud.

The portal gets ``ATRIUM_BACKENDS=local,openstack``, the harness' clouds.yaml entry
(``OS_CLIENT_CONFIG_FILE`` + ``ATRIUM_OS_CLOUD``), its network and security groups, and the
plans of ``tests/openstack/catalog.yaml``. The harness' compute driver runs each server's
user-data through the real boot path (cloud-init's schema check, then its modules in a
sandbox standing in for the VM: the owner's account, the read-only data mount, the systemd
unit), its services bound to the server's fixed IP (127.42.0.x), so an ACTIVE instance is
the JupyterLab that boot started, reached through Atrium's proxy as on a real cloud.
Everything goes through the REST API and the proxy; Nova is checked with openstacksdk as
admin. One portal for the module (each start is seconds on a busy machine).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AtriumServer, cleanup_sessions
from tests.harness.openstack.bootstrap import CloudSettings
from tests.openstack.helpers import BOOT_CONFIG, tagged_servers
from tests.openstack.test_openstack_errors import compute_quota
from tests.portal_setup import (
    PORTAL_DATABASES,
    endpoints_of,
    portal_database,
    start_with_catalog,
)
from tests.sessions import run_code, wait_for
from tests.sweeps import wait_for_sweeps

pytestmark = pytest.mark.timeout(300)

CATALOG = Path(__file__).with_name("catalog.yaml")
IMAGE = "JupyterLab (VM)"


@pytest.fixture(scope="module", params=PORTAL_DATABASES)
def portal_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """The portal's database: this module runs on SQLite and on PostgreSQL."""
    with portal_database(request.param, tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def portal(openstack_cloud: CloudSettings, tmp_path_factory: pytest.TempPathFactory,
           portal_db: str) -> Iterator[AtriumServer]:
    """``atrium serve`` with the openstack backend on the harness cloud."""
    cloud = openstack_cloud
    state = tmp_path_factory.mktemp("os-portal")
    boot_config = state / "boot.yaml"  # data mounts from the harness' file server
    boot_config.write_text(BOOT_CONFIG)
    srv = AtriumServer(portal_db, state,
                       ATRIUM_BACKENDS="local,openstack",
                       OS_CLIENT_CONFIG_FILE=cloud.clouds_yaml,
                       ATRIUM_OS_CLOUD=cloud.cloud_name,
                       ATRIUM_OS_NETWORKS=cloud.network_name,
                       ATRIUM_OS_SECURITY_GROUPS=f"default,{cloud.security_group}",
                       ATRIUM_OS_BOOT_CONFIG=str(boot_config))
    start_with_catalog(srv, CATALOG, ("alice", "bob"))
    try:
        yield srv
    finally:
        srv.stop()
        cleanup_sessions(srv)
        # whatever a failed test left in Nova: this deployment's servers
        with cloud.connect(admin=True) as conn:
            for server in conn.compute.servers(all_projects=True,
                                               tags=f"atrium-deployment={srv.deployment}"):
                conn.compute.delete_server(server, force=True)


def launch_on_vm(client: httpx.Client, name: str, flavour: str) -> str:
    plan = next(p["id"] for p in client.get("/api/v1/plans").json()
                if p["image"]["name"] == IMAGE and p["flavour"]["name"] == flavour
                and p["backend"] == "openstack")
    r = client.post("/api/v1/instances", json={"name": name, "plan_id": plan,
                                               "experiment_ids": []})
    assert r.status_code == 201, r.text
    return str(r.json()["uid"])


def server_processes(server_id: str) -> list[int]:
    """Live processes of a harness "VM" (its guest's, tagged ATRIUM_LAB_INSTANCE=<id>)."""
    tag = f"ATRIUM_LAB_INSTANCE={server_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_until(predicate: Callable[[], bool], timeout: float,
               what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what()
        time.sleep(0.3)


@pytest.fixture(scope="module")
def lab(portal: AtriumServer, openstack_cloud: CloudSettings) -> str:
    """alice's JupyterLab server on the small flavour, ACTIVE."""
    alice = portal.client("alice")
    uid = launch_on_vm(alice, "lab on a VM", "vm-small")
    data = wait_for(alice, uid, {"ACTIVE"}, timeout=150)
    assert data["backend"] == "openstack" and data["ready_protocols"] == ["jupyter"]
    return uid


async def test_jupyter_vm_runs_code_through_the_proxy(
        portal: AtriumServer, lab: str, openstack_cloud: CloudSettings) -> None:
    servers = tagged_servers(openstack_cloud, lab)
    assert len(servers) == 1 and servers[0].status == "ACTIVE"
    address = endpoints_of(portal, lab)["jupyter"]
    assert address.startswith("http://127.42.0.") and address.endswith(":8888")
    assert await run_code(portal.url, lab, portal.token("alice"), "6*7") == "42"


def test_outsider_gets_404_on_api_and_proxy(portal: AtriumServer, lab: str) -> None:
    bob = portal.client("bob")
    assert bob.get(f"/api/v1/instances/{lab}").status_code == 404
    assert bob.delete(f"/api/v1/instances/{lab}").status_code == 404
    r = bob.get(f"/instances/{lab}/lab/api/status")
    assert r.status_code == 404 and "error" in r.json()
    assert all(i["uid"] != lab for i in bob.get("/api/v1/instances").json())


def test_server_outlives_a_portal_crash(portal: AtriumServer, lab: str,
                                        openstack_cloud: CloudSettings) -> None:
    before = [s.id for s in tagged_servers(openstack_cloud, lab)]
    portal.kill()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{portal.url}/healthz", timeout=1)
    portal.start()
    alice = portal.client("alice")
    # the same JupyterLab: the kernel started before the crash is still there
    kernels = alice.get(f"/instances/{lab}/lab/api/kernels")
    assert kernels.status_code == 200, kernels.text
    assert len(kernels.json()) >= 1
    wait_for_sweeps(portal, whole=2)  # and the work they kicked: adopted, not recreated
    assert [s.id for s in tagged_servers(openstack_cloud, lab)] == before
    assert alice.get(f"/api/v1/instances/{lab}").json()["status"] == "ACTIVE"


def test_delete_removes_server_and_processes(portal: AtriumServer, lab: str,
                                             openstack_cloud: CloudSettings) -> None:
    (server,) = tagged_servers(openstack_cloud, lab)
    assert server_processes(server.id), "the VM runs no local process"
    alice = portal.client("alice")
    assert alice.delete(f"/api/v1/instances/{lab}").status_code == 202
    wait_for(alice, lab, {"DELETED"}, timeout=90)
    assert tagged_servers(openstack_cloud, lab) == []
    wait_until(lambda: not server_processes(server.id), 15,
               lambda: f"processes of the deleted VM left: {server_processes(server.id)}")
    assert os.listdir(portal.state_dir / "sessions") == []  # nothing went to local


def test_no_valid_host_is_an_error_and_releases_the_server(
        portal: AtriumServer, openstack_cloud: CloudSettings) -> None:
    alice = portal.client("alice")
    uid = launch_on_vm(alice, "too big", "vm-too-big")
    data = wait_for(alice, uid, {"ERROR"}, timeout=120)
    assert "No valid host" in data["reason"], data
    # the reconciler deleted the FAILED server before it recorded the ERROR
    wait_until(lambda: tagged_servers(openstack_cloud, uid) == [], 10,
               lambda: f"Nova still holds {tagged_servers(openstack_cloud, uid)}")


def test_a_nova_quota_refusal_is_the_instances_reason(
        portal: AtriumServer, openstack_cloud: CloudSettings) -> None:
    """Nova refuses the server (the project's instance quota is used up): the instance is
    an ERROR whose reason names the quota, and nothing was created."""
    alice = portal.client("alice")
    with compute_quota(openstack_cloud, instances=0):
        uid = launch_on_vm(alice, "over quota", "vm-small")
        data = wait_for(alice, uid, {"ERROR"}, timeout=120)
    assert data["reason"].startswith("OpenStack quota exceeded: "), data
    assert "Quota exceeded for instances" in data["reason"], data
    assert tagged_servers(openstack_cloud, uid) == []
    assert alice.delete(f"/api/v1/instances/{uid}").status_code == 202
    def deleted() -> bool:  # (wait_for would stop at the ERROR it starts from)
        r = alice.get(f"/api/v1/instances/{uid}")
        return r.status_code == 404 or r.json()["status"] == "DELETED"
    wait_until(deleted, 60, lambda: f"not deleted: {alice.get(f'/api/v1/instances/{uid}').text}")

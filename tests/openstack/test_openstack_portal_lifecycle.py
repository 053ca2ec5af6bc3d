"""OpenStack through the portal, the rest of an instance's life: user-data, stop/start/delete,
the sweep (orphans, servers deleted behind Atrium's back) and a Nova API outage.

Same set-up as test_openstack_portal.py (whose ``portal`` fixture and helpers are reused:
a real ``atrium serve`` of this module's own on the harness cloud). Everything a member
does goes through the REST API and the proxy; Nova is read and tampered with as admin
through openstacksdk. Tests run in file order and share two instances: alice's ``lab``
(one experiment of hers) and bob's ``other``.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from spawners.base import LABEL_DEPLOYMENT, LABEL_INSTANCE
from spawners.openstack import meta_key, tag
from tests.conftest import AtriumServer
from tests.harness.openstack.bootstrap import CloudSettings
from tests.harness.openstack.cloud import LocalCloud
from tests.lifetime_helpers import query
from tests.openstack.helpers import tagged_servers
from tests.openstack.test_openstack_portal import (  # noqa: F401  (portal: a fixture)
    IMAGE,
    portal,
    wait_until,
)
from tests.portal_setup import portal_database
from tests.sessions import wait_for
from tests.sweeps import job_runs, wait_for_sweeps

pytestmark = pytest.mark.timeout(300)

ALICE_CHOSEN, ALICE_OTHER = "20261002", "20261001"  # both alice's; only the first is chosen


def launch_with(client: httpx.Client, name: str, proposals: list[str]) -> str:
    """Launch on the small VM plan with the member's experiments ``proposals``."""
    mine = {e["proposal"]: e["id"] for e in client.get("/api/v1/experiments").json()}
    plan = next(p["id"] for p in client.get("/api/v1/plans").json()
                if p["image"]["name"] == IMAGE and p["flavour"]["name"] == "vm-small"
                and p["backend"] == "openstack")
    r = client.post("/api/v1/instances", json={
        "name": name, "plan_id": plan, "experiment_ids": [mine[p] for p in proposals]})
    assert r.status_code == 201, r.text
    return str(r.json()["uid"])


def token_of(srv: AtriumServer, uid: str) -> str:
    rows = query(srv.env["ATRIUM_DATABASE_URL"],
                 "SELECT s.jupyter_token FROM instance_secrets s JOIN instances i "
                 "ON i.id = s.instance_id WHERE i.uid = :uid", uid=uid)
    assert rows, f"no secrets stored for {uid}"
    return str(rows[0][0])


def user_data_of(cloud: CloudSettings, server_id: str) -> str:
    """The user-data Nova stored (admin only, compute microversion 2.3+)."""
    with cloud.connect(admin=True) as conn:
        r = conn.compute.get(f"/servers/{server_id}", microversion="2.3")
        r.raise_for_status()
        encoded = r.json()["server"]["OS-EXT-SRV-ATTR:user_data"]
    assert encoded, f"Nova holds no user-data for {server_id}"
    return base64.b64decode(encoded).decode()


def nova_answers(cloud: CloudSettings) -> bool:
    try:
        with cloud.connect(admin=True) as conn:
            list(conn.compute.servers(limit=1))
        return True
    except Exception:  # whatever the SDK raises while nova-api starts
        return False


def one_server(cloud: CloudSettings, uid: str) -> Any:
    servers = tagged_servers(cloud, uid)
    assert len(servers) == 1, f"{uid}: Nova holds {[(s.id, s.status) for s in servers]}"
    return servers[0]


def nova_status(cloud: CloudSettings, uid: str) -> str:
    return str(one_server(cloud, uid).status)


@pytest.fixture(scope="module")
def portal_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite only: this module exercises Nova (outages, servers deleted behind Atrium's
    back), not the database; test_openstack_portal.py runs on both (tests/portal_setup.py)."""
    with portal_database("sqlite", tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def lab(portal: AtriumServer) -> str:  # noqa: F811
    """alice's JupyterLab server with one of her two experiments, ACTIVE."""
    alice = portal.client("alice")
    uid = launch_with(alice, "lifecycle lab", [ALICE_CHOSEN])
    data = wait_for(alice, uid, {"ACTIVE"}, timeout=150)
    assert data["backend"] == "openstack"
    return uid


@pytest.fixture(scope="module")
def other(portal: AtriumServer) -> str:  # noqa: F811
    """bob's server (launched, not waited for)."""
    return launch_with(portal.client("bob"), "bob lab", ["20261003"])


def test_user_data_mounts_the_chosen_experiment_and_only_its_secrets(
        portal: AtriumServer, lab: str, other: str,  # noqa: F811
        openstack_cloud: CloudSettings) -> None:
    bob = portal.client("bob")
    wait_until(lambda: len(tagged_servers(openstack_cloud, other)) == 1, 90,
               lambda: f"no server for bob: {bob.get(f'/api/v1/instances/{other}').text}")
    mine = user_data_of(openstack_cloud, one_server(openstack_cloud, lab).id)
    theirs = user_data_of(openstack_cloud, one_server(openstack_cloud, other).id)
    doc = yaml.safe_load(mine)
    assert doc["atrium"]["instance"] == lab
    assert doc["atrium"]["deployment"] == portal.deployment

    # exactly the chosen experiment, read-only, under alice's home
    assert [(m["name"], m["read_only"]) for m in doc["atrium"]["mounts"]] == [
        (ALICE_CHOSEN, True)]
    written = {f["path"]: f["content"] for f in doc["write_files"]}
    entries = [line.split() for line in written["/etc/atrium/fstab"].splitlines()
               if line.strip() and not line.startswith("#")]
    assert len(entries) == 1, entries
    (device, target, _fstype, options, *_) = entries[0]
    assert device.endswith(ALICE_CHOSEN) and target == f"/home/alice/data/{ALICE_CHOSEN}"
    assert "ro" in options.split(",") and "rw" not in options.split(",")
    assert ALICE_OTHER not in mine and "20261003" not in mine

    # only this instance's secrets: its own token, never bob's (and the other way round)
    token, bobs = token_of(portal, lab), token_of(portal, other)
    assert token != bobs
    assert token in mine and bobs not in mine
    assert bobs in theirs and token not in theirs


def test_server_deleted_behind_atriums_back_is_an_error(
        portal: AtriumServer, other: str, openstack_cloud: CloudSettings) -> None:  # noqa: F811
    bob = portal.client("bob")
    wait_for(bob, other, {"ACTIVE"}, timeout=150)
    server = one_server(openstack_cloud, other)
    with openstack_cloud.connect(admin=True) as conn:
        conn.compute.delete_server(server, force=True)
    data = wait_for(bob, other, {"ERROR"}, timeout=60)
    # Nova kills the guest (driver.destroy) before it deallocates the ports and marks the
    # server deleted, as on a real cloud: a reconcile pass in between finds it not answering
    assert data["reason"] in ("the session's resources vanished",
                              "none of the session's protocols answers"), data
    wait_until(lambda: tagged_servers(openstack_cloud, other) == [], 30,
               lambda: f"Nova still holds {tagged_servers(openstack_cloud, other)}")
    # the member can still delete the failed instance
    # (sessions.wait_for gives up on ERROR, the status it starts from: poll for the end)
    assert bob.delete(f"/api/v1/instances/{other}").status_code == 202
    gone = lambda: bob.get(f"/api/v1/instances/{other}")  # noqa: E731
    wait_until(lambda: gone().status_code == 404 or gone().json()["status"] == "DELETED",
               60, lambda: f"not deleted: {gone().text}")


def test_sweep_deletes_an_orphan_server(portal: AtriumServer,  # noqa: F811
                                        openstack_cloud: CloudSettings) -> None:
    uid = f"orphan{secrets.token_hex(4)}"  # no instance row has this uid
    with openstack_cloud.connect() as conn:
        image = conn.image.find_image("atrium-tiny", ignore_missing=False)
        flavour = conn.compute.find_flavor("atrium.small", ignore_missing=False)
        network = conn.network.find_network(openstack_cloud.network_name, ignore_missing=False)
        # tagged the way spawners/openstack.py tags its servers
        created = conn.compute.create_server(
            name=f"atrium-{uid}", image_id=image.id, flavor_id=flavour.id,
            networks=[{"uuid": network.id}],
            metadata={meta_key(LABEL_INSTANCE): uid,
                      meta_key(LABEL_DEPLOYMENT): portal.deployment},
            tags=[tag(LABEL_INSTANCE, uid), tag(LABEL_DEPLOYMENT, portal.deployment)])
    try:
        # the sweep (every 2 s) deletes it; never adopted as an instance
        wait_until(lambda: tagged_servers(openstack_cloud, uid) == [], 60,
                   lambda: f"the orphan is still there: {tagged_servers(openstack_cloud, uid)}")
        assert "orphaned" in portal.log.read_text()
        for user in ("alice", "bob"):
            listed = portal.client(user).get("/api/v1/instances").json()
            assert all(i["uid"] != uid for i in listed)
    finally:
        with openstack_cloud.connect(admin=True) as conn:
            conn.compute.delete_server(created.id, ignore_missing=True)


def test_portal_answers_during_a_nova_api_outage(
        portal: AtriumServer, lab: str, openstack_harness: LocalCloud,  # noqa: F811
        openstack_cloud: CloudSettings) -> None:
    before = one_server(openstack_cloud, lab).id
    alice = portal.client("alice")
    openstack_harness.stop_service("nova-api")
    try:
        with pytest.raises(Exception):  # noqa: B017 (whatever the SDK raises: it is down)
            with openstack_cloud.connect(admin=True) as conn:
                list(conn.compute.servers())
        # Three whole sweeps fail to list Nova meanwhile (counted, not timed).
        outage_ends = job_runs(portal) + 4
        while job_runs(portal) < outage_ends:
            assert httpx.get(f"{portal.url}/healthz", timeout=10).status_code == 200
            r = alice.get("/api/v1/instances")
            assert r.status_code == 200, r.text
            assert {i["uid"]: i["status"] for i in r.json()}[lab] == "ACTIVE"
            # the session itself does not need Nova: the proxy still reaches it
            assert alice.get(f"/instances/{lab}/lab/api/status").status_code == 200
            time.sleep(0.5)
    finally:
        openstack_harness.start_service("nova-api")
    wait_until(lambda: nova_answers(openstack_cloud), 60, lambda: "nova-api did not come back")
    wait_for_sweeps(portal, whole=2)  # the instance is compared with Nova again
    assert alice.get(f"/api/v1/instances/{lab}").json()["status"] == "ACTIVE"
    assert [s.id for s in tagged_servers(openstack_cloud, lab)] == [before]


def test_stop_start_delete_through_the_api(portal: AtriumServer, lab: str,  # noqa: F811
                                           openstack_cloud: CloudSettings) -> None:
    alice = portal.client("alice")
    server_id = one_server(openstack_cloud, lab).id

    assert alice.post(f"/api/v1/instances/{lab}/stop").status_code == 202
    wait_for(alice, lab, {"STOPPED"}, timeout=90)
    assert nova_status(openstack_cloud, lab) == "SHUTOFF"
    assert alice.get(f"/instances/{lab}/lab/api/status").status_code != 200

    assert alice.post(f"/api/v1/instances/{lab}/start").status_code == 202
    data = wait_for(alice, lab, {"ACTIVE"}, timeout=150)
    assert data["ready_protocols"] == ["jupyter"]
    assert nova_status(openstack_cloud, lab) == "ACTIVE"
    assert one_server(openstack_cloud, lab).id == server_id  # the same server
    r = alice.get(f"/instances/{lab}/lab/api/status")
    assert r.status_code == 200, r.text

    assert alice.delete(f"/api/v1/instances/{lab}").status_code == 202
    wait_for(alice, lab, {"DELETED"}, timeout=90)
    assert tagged_servers(openstack_cloud, lab) == []
    with openstack_cloud.connect(admin=True) as conn:
        assert conn.compute.find_server(server_id, ignore_missing=True,
                                        all_projects=True) is None

"""Replicas agree at once: two `atrium serve` processes on one PostgreSQL database.

Their caches keep facts for 10 minutes (ATRIUM_CACHE_TTL=600), so whatever one replica
learns within seconds of a change made through the other comes from the announcements
(LISTEN/NOTIFY) or the shared connection rows, never from a cache expiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from orchestrator.connections import EXPIRY
from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.revocation_helpers import (
    WITHIN,
    closed,
    eventually,
    open_kernel,
    query,
    set_member,
    token_headers,
)
from tests.sessions import launch, wait_for
from web.presence import HEARTBEAT

Replicas = tuple[AtriumServer, AtriumServer]


@pytest.fixture(scope="module")
def replicas(databases: Databases, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Replicas]:
    assert databases.kind == "postgres"  # SQLite variants are deselected (conftest.py)
    url = databases.new()
    state = tmp_path_factory.mktemp("replicas")  # shared, as a volume would be
    a = AtriumServer(url, state, ATRIUM_CACHE_TTL="600")
    b = AtriumServer(url, state, ATRIUM_CACHE_TTL="600", ATRIUM_DEPLOYMENT_ID=a.deployment)
    b.deployment, b._tokens = a.deployment, a._tokens  # one deployment, one set of tokens
    a.cli("demo", "--seed-only")
    a.start()
    try:
        b.start()
    except BaseException:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()
    cleanup_sessions(a)


@pytest.fixture(scope="module")
def shared(replicas: Replicas) -> Iterator[str]:
    """alice's JupyterLab, launched through replica A; members may connect on their own."""
    a, b = replicas
    alice = a.client("alice")
    uid = launch(alice, "replicated")
    wait_for(alice, uid, {"ACTIVE"})
    r = b.client("alice").patch(f"/api/v1/instances/{uid}/sharing",
                                json={"unrestricted_member_access": True})
    assert r.status_code == 200, r.text
    yield uid
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})


def lab_status(srv: AtriumServer, user: str, uid: str) -> int:
    return srv.client(user).get(f"/instances/{uid}/lab/api/status").status_code


async def test_a_member_removed_on_one_replica_is_disconnected_on_the_other(
        replicas: Replicas, shared: str) -> None:
    a, b = replicas
    set_member(b.client("alice"), shared, "bob", "USER")
    assert lab_status(a, "bob", shared) == 200  # replica A now caches the route
    lab = await open_kernel(a, shared, token_headers(a.token("bob")))
    r = b.client("alice").delete(f"/api/v1/instances/{shared}/members/bob")
    assert r.status_code == 204
    assert await closed(lab) == 4403
    assert lab_status(a, "bob", shared) == 404


async def test_the_owner_connected_on_one_replica_is_present_on_the_other(
        replicas: Replicas) -> None:
    a, b = replicas
    alice = a.client("alice")
    uid = launch(alice, "presence across replicas")
    wait_for(alice, uid, {"ACTIVE"})
    set_member(alice, uid, "carol", "USER")
    r = b.client("carol").get(f"/instances/{uid}/lab/api/status")
    assert r.status_code == 403 and "owner is connected" in r.json()["error"]["message"]
    owner = await open_kernel(a, uid, token_headers(a.token("alice")))
    eventually(lambda: lab_status(b, "carol", uid) == 200, WITHIN,
               "the owner connected on A is present on B")
    owner.close()
    rows = await query(a, "SELECT count(*) FROM live_connections WHERE instance_uid = :uid "
                          "AND user_id = (SELECT id FROM users WHERE username = 'alice')",
                       uid=uid)
    assert rows[0][0] >= 1
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})


async def test_a_lost_listener_reconnects_and_drops_every_cache(replicas: Replicas,
                                                                shared: str) -> None:
    a, b = replicas
    set_member(b.client("alice"), shared, "carol", "USER")
    assert lab_status(a, "carol", shared) == 200
    # Removed behind the portal's back: nothing is announced, A's cache still says member.
    await query(a, "DELETE FROM instance_members WHERE user_id = "
                   "(SELECT id FROM users WHERE username = 'carol') AND instance_id = "
                   "(SELECT id FROM instances WHERE uid = :uid)", uid=shared)
    assert lab_status(a, "carol", shared) == 200
    killed = await query(a, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'atrium-listen' "
                            "AND datname = current_database()")
    assert len(killed) == 2  # one listener per replica
    eventually(lambda: lab_status(a, "carol", shared) == 404, 15,
               "replica A dropped its caches after reconnecting")
    for _ in range(150):  # both replicas listen again (bounded wait)
        if len(await query(a, "SELECT pid FROM pg_stat_activity WHERE application_name = "
                              "'atrium-listen' AND datname = current_database()")) == 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the replicas did not listen again")
    # ...and announcements flow again: a change on B reaches A at once.
    set_member(b.client("alice"), shared, "carol", "USER")
    eventually(lambda: lab_status(a, "carol", shared) == 200, WITHIN, "re-added on A")
    set_member(b.client("alice"), shared, "carol", None)
    eventually(lambda: lab_status(a, "carol", shared) == 404, WITHIN, "removed on A")



async def test_the_connections_of_a_crashed_replica_expire(replicas: Replicas,
                                                           shared: str) -> None:
    a, b = replicas
    owner = await open_kernel(a, shared, token_headers(a.token("alice")))
    sql = ("SELECT count(*) FROM live_connections WHERE instance_uid = :uid "
           "AND protocol = 'lab'")
    for _ in range(100):  # the row is written just after the WebSocket opens
        if (await query(a, sql, uid=shared))[0][0] == 1:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("no row for the open WebSocket")
    a.kill()  # no clean-up: its rows stay until they expire
    owner.close()
    # B's heartbeats delete them once EXPIRY passed without a beat from A (bounded wait).
    for _ in range(int((EXPIRY + HEARTBEAT + 15) * 10)):
        if (await query(b, sql, uid=shared))[0][0] == 0:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the dead replica's connection row did not expire")
    a.start()

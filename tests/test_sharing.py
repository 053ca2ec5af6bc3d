"""Sharing: invitations, access requests, support access, owner presence, revocation."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from orchestrator.models import MemberRole, utcnow
from sharing.policy import MEMBER_GRANTS, Action, InstanceAccess, Principal, authorize
from tests.conftest import AtriumServer
from tests.lifetime_helpers import execute
from tests.rfb_client import RfbClient
from tests.sessions import launch, launch_plan, wait_for

# --- the policy, over random membership histories --------------------------------------

USERS = st.integers(min_value=1, max_value=6)
EVENTS = st.lists(st.tuples(st.sampled_from(["add", "role", "remove"]), USERS,
                            st.sampled_from([MemberRole.USER, MemberRole.GUEST,
                                             MemberRole.SUPPORT])), max_size=30)


@settings(max_examples=300, deadline=None)
@given(history=EVENTS, who=USERS, roles=st.sets(st.sampled_from(["STAFF", "GUEST"])),
       action=st.sampled_from(list(Action)), present=st.booleans(),
       unrestricted=st.booleans())
def test_policy_never_grants_more_than_the_role_table(history: list, who: int, roles: set,
                                                      action: Action, present: bool,
                                                      unrestricted: bool) -> None:
    owner = 1
    members: dict[int, MemberRole] = {}
    for op, user, role in history:
        if user == owner:
            continue
        if (op == "add" and user not in members) or (op == "role" and user in members):
            members[user] = role
        elif op == "remove":
            members.pop(user, None)
    access = InstanceAccess("abc", owner, dict(members), unrestricted=unrestricted)
    decision = authorize(Principal(who, f"u{who}", frozenset(roles)), access, action, present)
    role = MemberRole.OWNER if who == owner else members.get(who)
    if decision.allowed:
        assert role is not None and action in MEMBER_GRANTS[role]
    else:
        assert decision.status == (404 if role is None else 403)


# --- against a real portal --------------------------------------------------------------


def test_invitation_links_work_once_before_expiry_and_untampered(server: AtriumServer
                                                                  ) -> None:
    alice, gina, bob = (server.client(u) for u in ("alice", "gina", "bob"))
    uid = launch(alice, "invitations")
    r = alice.post(f"/api/v1/instances/{uid}/invitations", json={"role": "GUEST"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert r.json()["url"].endswith(f"/invitations/{token}")
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    r = gina.post(f"/api/v1/invitations/{tampered}")
    assert r.status_code == 404 and "not valid" in r.json()["error"]["message"]
    r = gina.post(f"/api/v1/invitations/{token}")
    assert r.status_code == 200 and r.json()["role"] == "GUEST"
    r = bob.post(f"/api/v1/invitations/{token}")
    assert r.status_code == 410 and "already used" in r.json()["error"]["message"]
    assert bob.get(f"/api/v1/instances/{uid}").status_code == 404
    short = alice.post(f"/api/v1/instances/{uid}/invitations",
                       json={"role": "USER", "expires_in_hours": 1}).json()["token"]
    # An hour passes (instead of sleeping through a short expiry): the expiry the portal
    # recorded is moved to one second ago behind its back.
    execute(server.env["ATRIUM_DATABASE_URL"],
            "UPDATE invitations SET expires_at = :past WHERE used_at IS NULL "
            "AND instance_id = (SELECT id FROM instances WHERE uid = :uid)",
            past=utcnow() - dt.timedelta(seconds=1), uid=uid)
    r = bob.post(f"/api/v1/invitations/{short}")
    assert r.status_code == 410 and "expired" in r.json()["error"]["message"]
    members = {m["username"]: m["role"] for m in
               alice.get(f"/api/v1/instances/{uid}/members").json()}
    assert members == {"alice": "OWNER", "gina": "GUEST"}
    alice.delete(f"/api/v1/instances/{uid}")


def test_access_request_accepted_then_dashboard_shows_the_shared_instance(
        server: AtriumServer) -> None:
    alice, gina = server.client("alice"), server.client("gina")
    uid = launch(alice, "requested")
    r = gina.post(f"/api/v1/instances/{uid}/access-requests", json={"message": "may I?"})
    assert r.status_code == 201
    assert gina.post(f"/api/v1/instances/{uid}/access-requests",
                     json={}).status_code == 409  # one pending request at a time
    pending = alice.get(f"/api/v1/instances/{uid}/access-requests").json()
    assert [(p["username"], p["message"]) for p in pending] == [("gina", "may I?")]
    assert gina.get(f"/api/v1/instances/{uid}/access-requests").status_code == 404
    r = alice.post(f"/api/v1/instances/{uid}/access-requests/{pending[0]['id']}",
                   json={"decision": "accept", "role": "GUEST"})
    assert r.status_code == 200 and r.json()["status"] == "ACCEPTED"
    mine = gina.get("/api/v1/access-requests").json()
    assert mine[0]["instance"] == uid and mine[0]["status"] == "ACCEPTED"
    assert gina.get(f"/api/v1/instances/{uid}").json()["role"] == "GUEST"
    # Shared instances are on the member's dashboard, marked, with the owner's name.
    page = httpx.Client(base_url=server.url, follow_redirects=False)
    page.get("/login")
    page.post("/login", data={"username": "gina", "_xsrf": page.cookies["_xsrf"]})
    html = page.get("/").text
    assert "requested" in html and "shared · guest" in html and "Alice Adams" in html
    alice.delete(f"/api/v1/instances/{uid}")


def test_support_joins_with_an_audit_trail_the_owner_reads(server: AtriumServer) -> None:
    alice, dave, gina = (server.client(u) for u in ("alice", "dave", "gina"))
    uid = launch(alice, "needs help")
    found = [i["uid"] for i in dave.get("/api/v1/support/instances").json()]
    assert uid in found
    assert gina.get("/api/v1/support/instances").status_code == 403
    assert dave.get(f"/instances/{uid}/lab/api/status").status_code == 403  # join first
    assert dave.post(f"/api/v1/instances/{uid}/support",
                     json={"reason": "ticket 7"}).status_code == 201
    events = alice.get(f"/api/v1/instances/{uid}/events").json()
    assert any(e["kind"] == "support-joined" and e["user"] == "dave"
               and e["detail"] == "ticket 7" for e in events)
    members = {m["username"]: m["role"] for m in
               alice.get(f"/api/v1/instances/{uid}/members").json()}
    assert members["dave"] == "SUPPORT"
    alice.delete(f"/api/v1/instances/{uid}")


def test_members_connect_only_while_the_owner_is_connected(server: AtriumServer) -> None:
    alice, carol = server.client("alice"), server.client("carol")
    uid = launch(alice, "presence")
    wait_for(alice, uid, {"ACTIVE"})
    alice.post(f"/api/v1/instances/{uid}/members", json={"user": "carol", "role": "USER"})
    r = carol.get(f"/instances/{uid}/lab/api/status")
    assert r.status_code == 403 and "owner is connected" in r.json()["error"]["message"]
    assert alice.get(f"/instances/{uid}/lab/api/status").status_code == 200  # alice is here
    assert carol.get(f"/instances/{uid}/lab/api/status").status_code == 200
    alice.delete(f"/api/v1/instances/{uid}")


async def test_revocation_closes_open_connections(server: AtriumServer) -> None:
    alice = server.client("alice")
    uid = launch_plan(alice, "revocation", "Analysis desktop")
    wait_for(alice, uid, {"ACTIVE"})
    alice.patch(f"/api/v1/instances/{uid}/sharing", json={"unrestricted_member_access": True})
    alice.post(f"/api/v1/instances/{uid}/members", json={"user": "carol", "role": "USER"})
    headers = {"Authorization": f"Bearer {server.token('carol')}"}
    base = server.url.replace("http", "ws")
    lab = await websocket_connect(HTTPRequest(
        f"{base}/instances/{uid}/lab/api/events/subscribe", headers=headers))
    desk = await RfbClient.connect(f"{base}/instances/{uid}/desktop/websockify",
                                   server.token("carol"))
    assert alice.delete(f"/api/v1/instances/{uid}/members/carol").status_code == 204
    assert await asyncio.wait_for(lab.read_message(), 10) is None  # closed by the portal
    assert lab.close_code == 4403
    with pytest.raises(ConnectionError):
        while True:
            await desk._read(1, timeout=10)
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(
            f"{base}/instances/{uid}/lab/api/events/subscribe", headers=headers))
    assert err.value.code == 404
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})

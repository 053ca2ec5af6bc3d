"""The authorization matrix: every role x every action x every entry point, against a real
portal, a real JupyterLab and a real Xvnc desktop. The expected table is written out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import AtriumServer
from tests.rfb_client import RfbClient
from tests.session_hosts import LoopbackTransport, open_as_browser
from tests.sessions import launch, launch_plan, wait_for

ROLES = ["owner", "user", "guest", "support", "is_on", "is_off", "admin", "outsider",
         "anonymous"]
# Who plays each role. The instance uses experiment 20261001 (instrument LOKI): erin is
# instrument scientist of LOKI, frank of DREAM; dave (SUPPORT) joins as support.
PEOPLE = {"owner": "alice", "user": "carol", "guest": "bob", "support": "dave",
          "is_on": "erin", "is_off": "frank", "admin": "admin", "outsider": "gina",
          "anonymous": None}

OK = "ok"
HIDDEN = "hidden"  # the page answers but leaves the part out
WATCH = "watch"  # connected, input dropped
INPUT = "input"  # connected, input reaches the desktop


def row(owner: object, user: object, guest: object, support: object, is_on: object,
        is_off: object, admin: object, outsider: object, anonymous: object) -> dict:
    return dict(zip(ROLES, [owner, user, guest, support, is_on, is_off, admin, outsider,
                            anonymous], strict=True))


#                      owner  user   guest  support is_on is_off admin outsider anon
EXPECTED = {
    ("page", "view"):           row(OK, OK, OK, OK, OK, 403, OK, 403, 302),
    ("page", "control"):        row(OK, OK, 403, OK, 403, 404, OK, 404, 403),
    ("page", "delete"):         row(OK, 403, 403, 403, 403, 404, OK, 404, 403),
    ("page", "manage_members"): row(OK, 403, 403, 403, 403, 404, OK, 404, 403),
    ("page", "read_audit"):     row(OK, HIDDEN, HIDDEN, OK, HIDDEN, 403, OK, 403, 302),
    ("page", "desktop_watch"):  row(OK, OK, OK, OK, 403, 404, OK, 404, 302),
    ("api", "view"):            row(OK, OK, OK, OK, OK, 404, OK, 404, 401),
    ("api", "control"):         row(OK, OK, 403, OK, 403, 404, OK, 404, 401),
    ("api", "delete"):          row(OK, 403, 403, 403, 403, 404, OK, 404, 401),
    ("api", "manage_members"):  row(OK, 403, 403, 403, 403, 404, OK, 404, 401),
    ("api", "read_audit"):      row(OK, 403, 403, OK, 403, 404, OK, 404, 401),
    ("proxy_http", "open_lab"): row(OK, OK, 403, OK, 403, 404, OK, 404, 302),
    ("proxy_ws", "open_lab"):   row(OK, OK, 403, OK, 403, 404, OK, 404, 401),
    ("bridge", "desktop_watch"): row(OK, OK, OK, OK, 403, 404, OK, 404, 401),
    ("bridge", "desktop_input"): row(INPUT, INPUT, WATCH, INPUT, 403, 404, INPUT, 404, 401),
}


class Actor:
    """One person's ways in: a browser-like cookie session and a bearer token."""

    def __init__(self, server: AtriumServer, username: str | None) -> None:
        self.server = server
        self.username = username
        self.api = server.client(username)
        self.page = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False,
                                 transport=LoopbackTransport())
        self.xsrf = ""
        if username:
            self.page.get("/login")
            self.xsrf = self.page.cookies["_xsrf"]
            r = self.page.post("/login", data={"username": username, "_xsrf": self.xsrf})
            assert r.status_code == 302, r.text

    def form(self, path: str, **data: str) -> httpx.Response:
        return self.page.post(path, data={**data, "_xsrf": self.xsrf})

    def ws_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.token(self.username)}"} \
            if self.username else {}


def outcome(r: httpx.Response, ok: tuple[int, ...] = (200, 201, 202, 204)) -> object:
    return OK if r.status_code in ok else r.status_code


@pytest.fixture(scope="module")
def matrix(server: AtriumServer) -> Iterator[tuple[str, dict[str, Actor]]]:
    actors = {role: Actor(server, person) for role, person in PEOPLE.items()}
    alice = actors["owner"].api
    uid = launch_plan(alice, "matrix", "Analysis desktop", ["20261001"])
    wait_for(alice, uid, {"ACTIVE"})
    for who, role in (("carol", "USER"), ("bob", "GUEST")):
        assert alice.post(f"/api/v1/instances/{uid}/members",
                          json={"user": who, "role": role}).status_code == 201
    # Owner presence is its own test (test_sharing.py): here members may always connect.
    alice.patch(f"/api/v1/instances/{uid}/sharing", json={"unrestricted_member_access": True})
    r = actors["support"].api.post(f"/api/v1/instances/{uid}/support",
                                   json={"reason": "ticket 42"})
    assert r.status_code == 201, r.text
    yield uid, actors
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})


def probe(entry: str, action: str, actor: Actor, uid: str, server: AtriumServer) -> object:
    if entry == "page":
        if action == "view":
            return outcome(actor.page.get(f"/instances/{uid}"))
        if action == "control":
            return outcome(actor.form(f"/instances/{uid}", action="start"), (302,))
        if action == "delete":
            target = throwaway(server) if may_delete(actor) else uid
            return outcome(actor.form(f"/instances/{target}", action="delete"), (302,))
        if action == "manage_members":
            r = actor.form(f"/instances/{uid}/sharing", op="add", user="gina", role="GUEST")
            if r.status_code == 302:
                actor.form(f"/instances/{uid}/sharing", op="remove", username="gina")
            return outcome(r, (302,))
        if action == "read_audit":
            r = actor.page.get(f"/instances/{uid}")
            if r.status_code != 200:
                return r.status_code
            return OK if "<h2>History</h2>" in r.text else HIDDEN
        if action == "desktop_watch":
            return outcome(open_as_browser(actor.page, server, uid, "desktop"))
    if entry == "api":
        api = actor.api
        if action == "view":
            return outcome(api.get(f"/api/v1/instances/{uid}"))
        if action == "control":
            return outcome(api.post(f"/api/v1/instances/{uid}/start"))
        if action == "delete":
            target = throwaway(server) if may_delete(actor) else uid
            return outcome(api.delete(f"/api/v1/instances/{target}"))
        if action == "manage_members":
            r = api.post(f"/api/v1/instances/{uid}/members", json={"user": "gina",
                                                                    "role": "GUEST"})
            if r.status_code == 201:
                assert api.delete(f"/api/v1/instances/{uid}/members/gina").status_code == 204
            return outcome(r)
        if action == "read_audit":
            return outcome(api.get(f"/api/v1/instances/{uid}/events"))
    if entry == "proxy_http":
        return outcome(actor.api.get(f"/instances/{uid}/lab/api/status"))
    if entry == "proxy_ws":
        return asyncio.run(ws_outcome(
            server.url.replace("http", "ws") + f"/instances/{uid}/lab/api/events/subscribe",
            actor.ws_headers()))
    if entry == "bridge":
        return asyncio.run(bridge_outcome(server, uid, actor, action))
    raise AssertionError((entry, action))


def PEOPLE_ALLOWED_DELETE(actor: Actor) -> bool:
    return actor.username in ("alice", "admin")


def may_delete(actor: Actor) -> bool:
    return actor.username in ("alice", "admin")


def throwaway(server: AtriumServer) -> str:
    """A fresh instance of alice's to delete, so allowed deletions keep the matrix one."""
    return launch(server.client("alice"), "throwaway")


async def ws_outcome(url: str, headers: dict[str, str]) -> object:
    try:
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
    except HTTPClientError as err:
        return err.code
    conn.close()
    return OK


async def bridge_outcome(server: AtriumServer, uid: str, actor: Actor, action: str) -> object:
    url = server.url.replace("http", "ws") + f"/instances/{uid}/desktop/websockify"
    try:
        client = await RfbClient.connect(url, server.token(actor.username)
                                         if actor.username else None)
    except HTTPClientError as err:
        return err.code
    try:
        if action == "desktop_watch":
            client.request(incremental=False)
            await client.update()
            return OK
        client.request(incremental=False)
        await client.update()
        client.pointer(640, 400, 4)  # right click: xfce's desktop menu
        client.pointer(640, 400, 0)
        changed = 0
        for _ in range(10):
            client.request(incremental=True)
            try:
                changed += await client.update(timeout=0.3)
            except TimeoutError:
                pass
        client.key(0xFF1B, True)  # Escape closes the menu again
        client.key(0xFF1B, False)
        await asyncio.sleep(0.5)
        return INPUT if changed > 500 else WATCH
    finally:
        client.close()


CASES = [(entry, action, role) for (entry, action), roles in EXPECTED.items() for role in roles]


@pytest.mark.parametrize("entry, action, role", CASES,
                         ids=[f"{e}-{a}-{r}" for e, a, r in CASES])
def test_authorization_matrix(matrix: tuple[str, dict[str, Actor]], server: AtriumServer,
                              entry: str, action: str, role: str) -> None:
    uid, actors = matrix
    assert probe(entry, action, actors[role], uid, server) == EXPECTED[(entry, action)][role]

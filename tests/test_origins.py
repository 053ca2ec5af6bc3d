"""One origin per instance, attacked: the Host allowlist, the ticket office, the session
host's cookie, the security headers of every page, and the portal's script-only path."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import create_engine, text
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.routing import PathMatches
from tornado.websocket import websocket_connect

from orchestrator.settings import Settings
from tests.conftest import AtriumServer
from tests.session_hosts import browser_client, follow, session_origin
from tests.sessions import launch, wait_for
from web.headers import PAGE_CSP
from web.origins import Origins


@pytest.fixture(scope="module")
def two(server: AtriumServer) -> Iterator[tuple[str, str]]:
    """Two running labs of alice's; bob is a USER member of the first."""
    alice = server.client("alice")
    first, second = launch(alice, "origins one"), launch(alice, "origins two")
    for uid in (first, second):
        wait_for(alice, uid, {"ACTIVE"})
    assert alice.post(f"/api/v1/instances/{first}/members",
                      json={"user": "bob", "role": "USER"}).status_code == 201
    alice.patch(f"/api/v1/instances/{first}/sharing", json={"unrestricted_member_access": True})
    yield first, second
    for uid in (first, second):
        alice.delete(f"/api/v1/instances/{uid}")


def session_url(server: AtriumServer, uid: str, path: str = "lab/api/status") -> str:
    return f"{session_origin(server, uid)}/instances/{uid}/{path}"


def ticket_url(client: httpx.Client, server: AtriumServer, uid: str) -> str:
    """Walk the flow up to (not including) the ticket's redemption."""
    r = client.get(session_url(server, uid))
    assert r.status_code == 302 and "/enter?state=" in r.headers["Location"], r.text
    r = client.get(r.headers["Location"])
    assert r.status_code == 302, r.text
    url = r.headers["Location"]
    assert url.startswith(session_origin(server, uid) + f"/instances/{uid}/ticket?ticket=")
    return url


def db_engine(server: AtriumServer):  # type: ignore[no-untyped-def]
    url = server.env["ATRIUM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    return create_engine(url)


# --- the host allowlist -------------------------------------------------------------------

def test_other_host_names_are_refused(server: AtriumServer) -> None:
    token = server.token("alice")
    for host in ("evil.example", "127.0.0.1.evil.example", f"localhost.evil:{server.port}",
                 "sessions.localhost", "xyz.sessions.localhost", "a.b.sessions.localhost"):
        for method, path in (("GET", "/"), ("GET", "/api/v1/me"), ("POST", "/api/v1/tokens"),
                             ("GET", "/login")):
            r = httpx.request(method, f"{server.url}{path}", json={"name": "x"},
                              headers={"Host": host, "Authorization": f"Bearer {token}"})
            assert r.status_code == 421, (host, path, r.text)
            assert "unknown host" in r.json()["error"]["message"]
    # Probes may address the server by any name; they reveal nothing.
    assert httpx.get(f"{server.url}/healthz", headers={"Host": "10.1.2.3.nip.io"}
                     ).status_code == 200
    # The portal's own names answer.
    me = httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "alice"


async def test_websocket_for_another_host_is_refused(server: AtriumServer,
                                                     two: tuple[str, str]) -> None:
    uid = two[0]
    url = server.url.replace("http", "ws") + f"/instances/{uid}/lab/api/events/subscribe"
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(url, headers={
            "Host": "rebound.evil.example", "Authorization": f"Bearer {server.token('alice')}"}))
    assert err.value.code == 421


def test_a_session_host_serves_its_instance_only(server: AtriumServer,
                                                 two: tuple[str, str]) -> None:
    first, second = two
    alice = browser_client(server, "alice")
    bearer = {"Authorization": f"Bearer {server.token('alice')}"}
    assert alice.get(session_url(server, first), headers=bearer).status_code == 200
    for path in ("/", "/api/v1/me", "/login", "/admin", f"/instances/{first}",
                 f"/instances/{first}/enter?state=x", "/api/v1/tokens"):
        r = alice.get(session_origin(server, first) + path, headers=bearer)
        assert r.status_code == 404, (path, r.text)
    # Another instance's paths are not served on this host, even to its owner.
    r = alice.get(f"{session_origin(server, first)}/instances/{second}/lab/api/status",
                  headers=bearer)
    assert r.status_code == 404


# --- tickets ------------------------------------------------------------------------------

def test_the_flow_sets_a_host_only_cookie_for_one_instance(server: AtriumServer,
                                                           two: tuple[str, str]) -> None:
    first, second = two
    alice = browser_client(server, "alice")
    r, seen = follow(alice, f"{server.url}/instances/{first}/lab/api/status")
    assert r.status_code == 200 and r.json()["started"], seen
    redeemed = alice.get(session_url(server, first))
    assert redeemed.status_code == 200  # the cookie alone now
    jar = {(c.domain, c.name): c for c in alice.cookies.jar}
    grant = jar[(f"{first}.sessions.localhost", "atrium_instance")]
    assert not grant.domain_initial_dot and grant.has_nonstandard_attr("HttpOnly")
    assert ("127.0.0.1", "atrium_session") in jar
    assert not any(c.domain.endswith("sessions.localhost") and c.name == "atrium_session"
                   for c in alice.cookies.jar)
    # The grant of the first instance is worth nothing on the second's host.
    r = httpx.get(session_url(server, second).replace(f"{second}.sessions.localhost",
                                                      "127.0.0.1"),
                  headers={"Host": f"{second}.sessions.localhost:{server.port}",
                           "Cookie": f"atrium_instance={grant.value}"})
    assert r.status_code == 302 and "/enter?state=" in r.headers["Location"]


def test_a_ticket_works_once(server: AtriumServer, two: tuple[str, str]) -> None:
    alice = browser_client(server, "alice")
    url = ticket_url(alice, server, two[0])
    state = {c.name: c.value for c in alice.cookies.jar if c.name == "atrium_state"}
    first = alice.get(url)
    assert first.status_code == 302 and "atrium_instance" in first.headers["Set-Cookie"]
    replay = browser_client(server)
    replay.cookies.set("atrium_state", state["atrium_state"],
                       domain=f"{two[0]}.sessions.localhost")
    again = replay.get(url)
    assert again.status_code == 403 and "not valid" in again.json()["error"]["message"]
    assert "set-cookie" not in again.headers or "atrium_instance" not in again.headers[
        "set-cookie"]


def test_an_expired_ticket_is_refused(server: AtriumServer, two: tuple[str, str]) -> None:
    alice = browser_client(server, "alice")
    url = ticket_url(alice, server, two[0])
    ticket = url.split("ticket=", 1)[1]
    digest = hashlib.sha256(ticket.encode()).hexdigest()
    with db_engine(server).begin() as db:  # the clock moves on: the ticket is a minute old
        db.execute(text("UPDATE session_tickets SET expires_at = :t WHERE digest = :d"),
                   {"t": dt.datetime.now(dt.UTC).replace(tzinfo=None)
                    - dt.timedelta(minutes=1), "d": digest})
    r = alice.get(url)
    assert r.status_code == 403
    with db_engine(server).connect() as db:  # consumed all the same
        assert db.execute(text("SELECT count(*) FROM session_tickets WHERE digest = :d"),
                          {"d": digest}).scalar_one() == 0


def test_a_ticket_for_another_instance_is_refused(server: AtriumServer,
                                                  two: tuple[str, str]) -> None:
    first, second = two
    alice = browser_client(server, "alice")
    url = ticket_url(alice, server, first)
    ticket = url.split("ticket=", 1)[1]
    ticket_url(alice, server, second)  # alice holds a state for the second host too
    r = alice.get(f"{session_origin(server, second)}/instances/{second}/ticket?ticket={ticket}")
    assert r.status_code == 403
    # On the right host but the other instance's path: not even routed.
    r = alice.get(f"{session_origin(server, first)}/instances/{second}/ticket?ticket={ticket}")
    assert r.status_code == 404


def test_a_ticket_of_another_user_is_refused(server: AtriumServer,
                                             two: tuple[str, str]) -> None:
    """alice's ticket planted in bob's browser (a login CSRF): bob's state differs."""
    uid = two[0]
    alice, bob = browser_client(server, "alice"), browser_client(server, "bob")
    url = ticket_url(alice, server, uid)
    ticket_url(bob, server, uid)  # bob's browser has its own state for this host
    r = bob.get(url)
    assert r.status_code == 403
    # Without any state (a browser that never started the flow): refused too.
    url = ticket_url(alice, server, uid)
    assert browser_client(server, "bob").get(url).status_code == 403


def test_forged_and_foreign_cookies_are_refused(server: AtriumServer,
                                                two: tuple[str, str]) -> None:
    uid = two[0]
    alice = browser_client(server, "alice")
    follow(alice, f"{server.url}/instances/{uid}/lab/api/status")
    jar = {(c.domain, c.name): c.value for c in alice.cookies.jar}
    grant = jar[(f"{uid}.sessions.localhost", "atrium_instance")]
    portal_cookie = jar[("127.0.0.1", "atrium_session")]
    direct = session_url(server, uid).replace(f"{uid}.sessions.localhost", "127.0.0.1")
    host = {"Host": f"{uid}.sessions.localhost:{server.port}"}

    def outcome(cookie: str) -> int:
        return httpx.get(direct, headers={**host, "Cookie": cookie}).status_code

    assert outcome(f"atrium_instance={grant}") == 200
    user_id, digest = grant.split("|")[1], grant.split("|")[2]
    forgeries = [
        f"atrium_instance={uid}|{user_id}|{digest}",  # unsigned
        "atrium_instance=" + grant.replace(f"|{user_id}|", "|1|"),  # another user
        "atrium_instance=" + re.sub(r"\|[0-9a-f]{10}", "|0000000000", grant, count=1),
        f"atrium_session={portal_cookie}",  # the portal's cookie
        f"atrium_instance={portal_cookie}",  # its value under this host's name
        f"atrium_state={grant}",  # another Atrium cookie's signature
    ]
    for cookie in forgeries:
        assert outcome(cookie) == 302, cookie  # anonymous here: sent to the ticket office
    # A cookie another instance's code planted for the whole sessions domain (it comes
    # first) does not shadow this host's own.
    assert outcome(f"atrium_instance=planted; {forgeries[1]}; atrium_instance={grant}") == 200


async def test_portal_cookie_opens_no_websocket_on_a_session_host(
        server: AtriumServer, two: tuple[str, str]) -> None:
    uid = two[0]
    alice = browser_client(server, "alice")
    portal_cookie = alice.cookies["atrium_session"]
    url = f"ws://127.0.0.1:{server.port}/instances/{uid}/lab/api/events/subscribe"
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(url, headers={
            "Host": f"{uid}.sessions.localhost:{server.port}",
            "Cookie": f"atrium_session={portal_cookie}"}))
    assert err.value.code == 401


def test_logout_ends_the_session_hosts_cookie(server: AtriumServer,
                                              two: tuple[str, str]) -> None:
    uid = two[0]
    bob = browser_client(server, "bob")
    r, _ = follow(bob, f"{server.url}/instances/{uid}/lab/api/status")
    assert r.status_code == 200
    assert bob.post("/logout", data={"_xsrf": bob.cookies["_xsrf"]}).status_code == 302
    r = bob.get(session_url(server, uid))
    assert r.status_code == 302 and "/enter?state=" in r.headers["Location"]


def test_the_ticket_office_checks_its_input(server: AtriumServer, two: tuple[str, str]) -> None:
    uid, second = two
    bob = browser_client(server, "bob")
    state = "s" * 24
    r = bob.get(f"/instances/{uid}/enter?state=short")
    assert r.status_code == 400
    # next outside the instance: the lab instead (no open redirect through the ticket).
    r = bob.get(f"/instances/{uid}/enter?state={state}&next=https://evil.example/")
    assert r.status_code == 302 and r.headers["Location"].startswith(
        session_origin(server, uid))
    # Not bob's instance: no ticket.
    assert bob.get(f"/instances/{second}/enter?state={state}").status_code == 404
    # Anonymous: the login page first, then back here.
    r = browser_client(server).get(f"{server.url}/instances/{uid}/enter?state={state}")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")
    # A bearer token gets no ticket (scripts use the token on the host directly).
    r = httpx.get(f"{server.url}/instances/{uid}/enter?state={state}",
                  headers={"Authorization": f"Bearer {server.token('bob')}"})
    assert r.status_code == 400


# --- the portal's host: browsers go to the instance's host, scripts are sandboxed --------

def test_portal_host_sends_browsers_away_and_sandboxes_scripts(
        server: AtriumServer, two: tuple[str, str]) -> None:
    uid = two[0]
    token = {"Authorization": f"Bearer {server.token('alice')}"}
    r = httpx.get(f"{server.url}/instances/{uid}/lab/api/status", headers=token)
    assert r.status_code == 200 and r.headers["Content-Security-Policy"] == "sandbox"
    alice = browser_client(server, "alice")
    for headers in ({}, token):  # a login cookie, with or without a token: the browser path
        r = alice.get(f"/instances/{uid}/lab/lab", headers=headers)
        assert r.status_code == 302
        assert r.headers["Location"] == session_url(server, uid, "lab/lab")
        r = alice.post(f"/instances/{uid}/lab/api/kernels", headers=headers, json={})
        assert r.status_code == 403


# --- security headers on every page -------------------------------------------------------

def portal_paths(uid: str) -> list[str]:
    """Every GET-able path of the portal's route table, with ``uid`` for each group."""
    from web.app import make_app

    settings = Settings(state_dir=None, database_url="", cookie_secret="x" * 32,  # type: ignore[arg-type]
                        public_url="http://127.0.0.1:1")
    portal = SimpleNamespace(settings=settings, origins=Origins.from_settings(settings))
    app = make_app(portal)  # type: ignore[arg-type]
    paths = []
    for rule in app.wildcard_router.rules:
        matcher = rule.matcher.inner if hasattr(rule.matcher, "inner") else rule.matcher
        matcher = getattr(matcher, "path", matcher)
        if isinstance(matcher, PathMatches) and matcher._path is not None:
            args = ("x",) * matcher.regex.groups
            path = (matcher._path % args if args else matcher._path).replace("/?", "")
            paths.append(path.replace("/x", f"/{uid}", 1) if "instances" in path else path)
        elif isinstance(matcher, PathMatches):  # not reversible: its plain form
            paths.append(matcher.regex.pattern.rstrip("$").replace("/?", ""))
    return sorted({p for p in paths if not set(p) & set("?*()[]\\")})


def test_every_page_carries_the_security_headers(server: AtriumServer,
                                                 two: tuple[str, str]) -> None:
    uid = two[0]
    admin, anon = browser_client(server, "admin"), browser_client(server)
    paths = portal_paths(uid)
    assert {"/", "/login", "/tokens", "/admin", f"/instances/{uid}"} <= set(paths), paths
    html_pages = 0
    for path in [*paths, "/no/such/page", "/static/atrium.js"]:
        for who in (admin, anon):
            r = who.get(path)
            assert r.headers.get("X-Content-Type-Options") == "nosniff", path
            if r.headers.get("Content-Type", "").startswith("text/html"):
                html_pages += 1
                assert r.headers["Content-Security-Policy"] == PAGE_CSP, path
                assert "frame-ancestors 'none'" in PAGE_CSP
                assert r.headers["Referrer-Policy"] == "same-origin"
                # No inline script and no inline handler: the CSP would block them.
                assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), path
                assert not re.search(r"\son[a-z]+=", r.text), path
    assert html_pages > 20
    # The desktop page on the instance's host too.
    alice = browser_client(server, "alice")
    r, _ = follow(alice, f"{server.url}/instances/{uid}/desktop")
    assert r.status_code == 200 and r.headers["Content-Security-Policy"] == PAGE_CSP

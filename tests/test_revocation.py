"""Revocation reaches open connections: logout, token revocation, member removal, lowered
roles and removed admin roles close kernel WebSockets, desktop bridges and in-flight
proxied requests within 2 s, and a USER's removal rotates the instance's secrets.

Real portal (SQLite and PostgreSQL), real JupyterLab and Xvnc sessions. The cache
lifetimes are the defaults (10 s) and the periodic re-check runs every 3 s: a close within
2 s comes from the announcement, not from a cache expiring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AtriumServer
from tests.revocation_helpers import (
    browser_login,
    closed,
    cookie_headers,
    desktop_closed,
    on_instance_host,
    open_desktop,
    open_kernel,
    secrets_of,
    set_member,
    still_open,
    token_headers,
)
from tests.sessions import launch_plan, wait_for
from tests.test_desktop import ESCAPE, RIGHT_BUTTON, changes_after
from web.desktop import VncHandshakeError, vnc_connect


@pytest.fixture(scope="module")
def instance(server: AtriumServer) -> Iterator[str]:
    """alice's JupyterLab + desktop; members may connect while she is away."""
    alice = server.client("alice")
    uid = launch_plan(alice, "revocation", "Analysis desktop")
    wait_for(alice, uid, {"ACTIVE"}, timeout=180)
    r = alice.patch(f"/api/v1/instances/{uid}/sharing",
                    json={"unrestricted_member_access": True})
    assert r.status_code == 200, r.text
    yield uid
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})


@pytest.fixture
def alice(server: AtriumServer) -> httpx.Client:
    return server.client("alice")


async def test_logout_closes_what_that_login_opened_and_nothing_else(
        server: AtriumServer, instance: str, alice: httpx.Client) -> None:
    set_member(alice, instance, "bob", "USER")
    page = browser_login(server, "bob")
    by_cookie = cookie_headers(page)
    on_host = on_instance_host(server, instance, by_cookie)  # the instance host's cookie
    lab = await open_kernel(server, instance, on_host)
    desk = await open_desktop(server, instance, on_host)
    other = await open_kernel(server, instance, token_headers(server.token("bob")))
    r = page.post("/logout", data={"_xsrf": page.cookies["_xsrf"]})
    assert r.status_code == 302
    assert await closed(lab) == 4403
    assert await desktop_closed(desk)
    assert await still_open(other)  # bob's API token was not revoked
    other.close()
    # The instance host's cookie ended with the login: back to the portal to log in.
    r = httpx.get(f"{server.url}/instances/{instance}/lab/api/status", headers=on_host)
    assert r.status_code == 302 and f"/instances/{instance}/enter?" in r.headers["Location"]
    set_member(alice, instance, "bob", None)


async def test_revoking_a_token_closes_what_it_opened(server: AtriumServer, instance: str,
                                                      alice: httpx.Client) -> None:
    set_member(alice, instance, "bob", "USER")
    page = browser_login(server, "bob")
    r = page.post("/api/v1/tokens", json={"name": "script"},
                  headers={"X-XSRFToken": page.cookies["_xsrf"]})
    assert r.status_code == 201, r.text
    token, token_id = r.json()["token"], r.json()["id"]
    lab = await open_kernel(server, instance, token_headers(token))
    desk = await open_desktop(server, instance, token_headers(token))
    by_cookie = await open_kernel(server, instance, cookie_headers(page))
    r = page.delete(f"/api/v1/tokens/{token_id}", headers={"X-XSRFToken": page.cookies["_xsrf"]})
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert await closed(lab) == 4403
    assert await desktop_closed(desk)
    assert await still_open(by_cookie)
    by_cookie.close()
    set_member(alice, instance, "bob", None)


async def test_lowering_a_role_closes_the_lab_and_stops_desktop_input(
        server: AtriumServer, instance: str, alice: httpx.Client) -> None:
    set_member(alice, instance, "bob", "USER")
    bob = token_headers(server.token("bob"))
    lab = await open_kernel(server, instance, bob)
    desk = await open_desktop(server, instance, bob)
    desk.request(incremental=False)
    await desk.update()
    desk.pointer(300, 300, RIGHT_BUTTON)  # as a USER, input reaches the desktop (a menu)
    desk.pointer(300, 300, 0)
    assert await changes_after(desk, 3) > 1000
    desk.key(ESCAPE, True)
    desk.key(ESCAPE, False)
    await changes_after(desk, 1)
    r = alice.patch(f"/api/v1/instances/{instance}/members/bob", json={"role": "GUEST"})
    assert r.status_code == 200, r.text
    assert await closed(lab) == 4403
    # A guest keeps watching, but input no longer reaches the VNC server.
    assert not await desktop_closed(desk, 0.5)
    desk.pointer(300, 300, RIGHT_BUTTON)
    desk.pointer(300, 300, 0)
    # (xfce's clock may tick meanwhile: far fewer pixels than a menu)
    assert await changes_after(desk, 2) < 1000, "a guest's input reached the VNC server"
    desk.close()
    set_member(alice, instance, "bob", None)


async def test_changing_a_role_on_the_page_closes_the_lab(server: AtriumServer, instance: str,
                                                         alice: httpx.Client) -> None:
    set_member(alice, instance, "bob", "USER")
    lab = await open_kernel(server, instance, token_headers(server.token("bob")))
    page = browser_login(server, "alice")
    r = page.post(f"/instances/{instance}/sharing", data={
        "op": "role", "username": "bob", "role": "GUEST", "_xsrf": page.cookies["_xsrf"]})
    assert r.status_code == 302, r.text
    assert await closed(lab) == 4403
    members = {m["username"]: m["role"] for m in
               alice.get(f"/api/v1/instances/{instance}/members").json()}
    assert members["bob"] == "GUEST"
    set_member(alice, instance, "bob", None)


async def test_removing_an_admin_role_closes_their_connections(
        server: AtriumServer, instance: str) -> None:
    admin = server.client("admin")
    gina = next(u for u in admin.get("/api/v1/admin/users").json() if u["username"] == "gina")
    r = admin.patch(f"/api/v1/admin/users/{gina['id']}", json={"roles": ["ADMIN"]})
    assert r.status_code == 200, r.text
    lab = await open_kernel(server, instance, token_headers(server.token("gina")))
    r = admin.patch(f"/api/v1/admin/users/{gina['id']}", json={"roles": []})
    assert r.status_code == 200, r.text
    assert await closed(lab) == 4403
    assert server.client("gina").get(f"/instances/{instance}/lab/api/status").status_code == 404


async def test_removing_a_user_aborts_streams_and_rotates_the_secrets(
        server: AtriumServer, instance: str, alice: httpx.Client) -> None:
    set_member(alice, instance, "bob", "USER")
    bob = token_headers(server.token("bob"))
    before = await secrets_of(server, instance)
    # A large download bob reads slowly: an open HTTP stream through the proxy.
    big = "x" * (48 * 1024 * 1024)
    r = alice.put(f"/instances/{instance}/lab/api/contents/big.txt",
                  json={"type": "file", "format": "text", "content": big}, timeout=120)
    assert r.status_code in (200, 201), r.text
    lab = await open_kernel(server, instance, bob)
    desk = await open_desktop(server, instance, bob)
    async with httpx.AsyncClient(base_url=server.url, headers=bob, timeout=30) as c:
        async with c.stream("GET", f"/instances/{instance}/lab/files/big.txt") as download:
            assert download.status_code == 200
            chunks = download.aiter_raw(64 * 1024)
            received = len(await chunks.__anext__())
            assert alice.delete(f"/api/v1/instances/{instance}/members/bob").status_code == 204
            assert await closed(lab) == 4403
            assert await desktop_closed(desk)
            with pytest.raises(httpx.HTTPError):  # aborted, not completed
                async def drain() -> None:
                    nonlocal received
                    async for chunk in chunks:
                        received += len(chunk)
                await asyncio.wait_for(drain(), 10)
    assert received < len(big)
    # The old secrets no longer open JupyterLab or the VNC server; the new ones do.
    after = await secrets_of(server, instance)
    assert after["jupyter_token"] != before["jupyter_token"]
    assert after["vnc_password"] != before["vnc_password"]
    # Straight to the session's endpoint (a Unix socket for sandboxed local sessions).
    from spawners.endpoints import unix_path

    sock = unix_path(before["endpoint_jupyter"])
    base = "http://localhost" if sock else before["endpoint_jupyter"]
    status = f"{base}/instances/{instance}/lab/api/status"
    transport = httpx.AsyncHTTPTransport(uds=sock) if sock else None
    async with httpx.AsyncClient(timeout=10, transport=transport) as upstream:
        old = await upstream.get(status, headers={"Authorization":
                                                  f"token {before['jupyter_token']}"})
        new = await upstream.get(status, headers={"Authorization":
                                                  f"token {after['jupyter_token']}"})
    assert old.status_code == 403 and new.status_code == 200
    with pytest.raises(VncHandshakeError):
        await vnc_connect(before["endpoint_desktop"], before["vnc_password"])
    _, writer = await vnc_connect(before["endpoint_desktop"], after["vnc_password"])
    writer.close()
    # The owner's lab works on, through the proxy, with the new token.
    assert alice.get(f"/instances/{instance}/lab/api/status").status_code == 200
    events = alice.get(f"/api/v1/instances/{instance}/events").json()
    assert any(e["kind"] == "secrets-rotated" for e in events)
    alice.delete(f"/instances/{instance}/lab/api/contents/big.txt")

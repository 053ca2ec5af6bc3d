"""A hostile owner's session attacks the people who open it, and fails.

alice (owner) installs a server of her own in her session (a JupyterLab extension,
loaded after a reboot: :mod:`tests.hostile_session`) and saves a notebook whose output
runs JavaScript; bob (USER member) opens both in Chromium. Nothing reaches the portal as
bob, nothing lands in his portal cookies, and the session's server never sees Atrium's
credentials (HTTP and WebSocket, owner and member, cookie and token).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import AtriumServer
from tests.hostile_session import install_hostile_server, save_trusted_notebook
from tests.session_hosts import browser_client, follow, session_origin
from tests.sessions import launch, wait_for
from tests.test_browser import browser, login  # noqa: F401 - shared fixture

FORBIDDEN_RESPONSE = ("set-cookie", "service-worker-allowed", "clear-site-data",
                      "access-control-allow-origin", "access-control-allow-credentials",
                      "x-hostile")


@pytest.fixture(scope="module")
def hostile(server: AtriumServer) -> Iterator[str]:
    alice = server.client("alice")
    uid = launch(alice, "hostile")
    wait_for(alice, uid, {"ACTIVE"})
    token = server.token("alice")
    asyncio.run(install_hostile_server(server, uid, token))
    asyncio.run(save_trusted_notebook(server, uid, token, "attack.ipynb"))
    assert alice.post(f"/api/v1/instances/{uid}/reboot").status_code == 202
    wait_for(alice, uid, {"REBOOTING", "STARTING"}, timeout=30)
    wait_for(alice, uid, {"ACTIVE"})
    r = alice.get(f"/instances/{uid}/lab/hostile/echo")
    assert r.status_code == 200 and "headers" in r.json(), r.text
    assert alice.post(f"/api/v1/instances/{uid}/members",
                      json={"user": "bob", "role": "USER"}).status_code == 201
    alice.patch(f"/api/v1/instances/{uid}/sharing", json={"unrestricted_member_access": True})
    yield uid
    alice.delete(f"/api/v1/instances/{uid}")


def received(echo: dict) -> dict[str, str]:
    return {name.lower(): value for name, value in echo["headers"]}


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_the_session_sees_no_atrium_credential_over_http(server: AtriumServer, hostile: str,
                                                         who: str) -> None:
    client = browser_client(server, who)
    r, _ = follow(client, f"{server.url}/instances/{hostile}/lab/hostile/echo")
    assert r.status_code == 200
    jar = {c.name: c.value for c in client.cookies.jar}
    secrets = [jar["atrium_session"], jar["atrium_instance"], jar["_xsrf"],
               server.token(who)]
    token = {"Authorization": f"Bearer {server.token(who)}"}
    # Everything a browser could carry at once, by mistake or by a planted cookie.
    cookie = "; ".join([f"atrium_session={jar['atrium_session']}", f"_xsrf={jar['_xsrf']}",
                        f"atrium_instance={jar['atrium_instance']}", "mine=kept"])
    echoes = [
        client.get(f"{session_origin(server, hostile)}/instances/{hostile}/lab/hostile/echo",
                   headers={"Cookie": cookie, "X-XSRFToken": jar["_xsrf"]}),
        client.post(f"{session_origin(server, hostile)}/instances/{hostile}/lab/hostile/echo",
                    headers={"X-XSRFToken": jar["_xsrf"]}, content=b"{}"),
        httpx.get(f"{session_origin(server, hostile)}/instances/{hostile}/lab/hostile/echo"
                  .replace(f"{hostile}.sessions.localhost", "127.0.0.1"),
                  headers={**token, "Host": f"{hostile}.sessions.localhost:{server.port}"}),
        httpx.get(f"{server.url}/instances/{hostile}/lab/hostile/echo", headers=token),
    ]
    for r in echoes:
        assert r.status_code == 200, r.text
        seen = received(r.json())
        dump = json.dumps(r.json())
        for secret in secrets:
            assert secret not in dump
        assert "x-xsrftoken" not in seen
        assert seen["authorization"].startswith("token ")  # the instance's own secret
        assert "atrium" not in seen.get("cookie", "") and "_xsrf" not in seen.get("cookie", "")
        for name in FORBIDDEN_RESPONSE:
            assert name not in {h.lower() for h in r.headers}, name
    assert received(echoes[0].json())["cookie"] == "mine=kept"


@pytest.mark.parametrize("who", ["alice", "bob"])
async def test_the_session_sees_no_atrium_credential_over_websocket(
        server: AtriumServer, hostile: str, who: str) -> None:
    client = browser_client(server, who)
    await asyncio.to_thread(follow, client, f"{server.url}/instances/{hostile}/lab/api/status")
    jar = {c.name: c.value for c in client.cookies.jar}
    host = f"{hostile}.sessions.localhost:{server.port}"
    url = f"ws://127.0.0.1:{server.port}/instances/{hostile}/lab/hostile/ws"
    attempts = [
        {"Host": host, "Origin": f"http://{host}", "X-XSRFToken": jar["_xsrf"],
         "Cookie": f"atrium_instance={jar['atrium_instance']}; "
                   f"atrium_session={jar['atrium_session']}; _xsrf={jar['_xsrf']}"},
        {"Host": host, "Authorization": f"Bearer {server.token(who)}"},
    ]
    for headers in attempts:
        conn = await websocket_connect(HTTPRequest(url, headers=headers))
        message = await conn.read_message()
        conn.close()
        assert isinstance(message, str)
        for secret in (jar["atrium_session"], jar["atrium_instance"], jar["_xsrf"],
                       server.token(who)):
            assert secret not in message
        seen = received(json.loads(message))
        assert "atrium" not in seen.get("cookie", "") and "x-xsrftoken" not in seen


def portal_state(page: Page, server: AtriumServer) -> dict[str, str]:
    return {c["name"]: c["value"] for c in page.context.cookies(server.url)}


def run_attack(page: Page) -> dict[str, str]:
    box = page.locator("#attack-result[data-done]")
    expect(box).to_have_count(1, timeout=60_000)
    result: dict[str, str] = json.loads(box.first.text_content() or "{}")
    return result


def assert_nothing_reached_the_portal(result: dict[str, str], page: Page,
                                      server: AtriumServer, before: dict[str, str],
                                      tokens_before: list[dict]) -> None:
    assert result["read_me"].startswith("blocked"), result
    assert result["mint_token"].startswith("blocked"), result
    assert result["same_host_api"] == "status 404", result
    # The blind POST went out, and was refused: bob has no new token.
    assert server.client("bob").get("/api/v1/tokens").json() == tokens_before
    # bob's portal cookies are untouched, and his portal session works.
    assert portal_state(page, server) == before
    portal = page.context.new_page()
    portal.goto(server.url)
    expect(portal.get_by_role("heading", name="My instances")).to_be_visible()
    me = portal.evaluate("fetch('/api/v1/me').then(r => r.json())")
    assert me["username"] == "bob"
    portal.close()


@pytest.mark.browser
def test_notebook_javascript_cannot_act_as_the_member(browser: Browser,  # noqa: F811
                                                      server: AtriumServer,
                                                      hostile: str) -> None:
    page = browser.new_context().new_page()
    login(page, server, "bob")
    before = portal_state(page, server)
    tokens_before = server.client("bob").get("/api/v1/tokens").json()
    page.goto(f"{server.url}/instances/{hostile}/lab/lab/tree/attack.ipynb")
    page.wait_for_url(f"{session_origin(server, hostile)}/**")
    result = run_attack(page)
    assert_nothing_reached_the_portal(result, page, server, before, tokens_before)
    # The session's own host keeps working for bob after the script ran.
    status = page.evaluate(f"fetch('/instances/{hostile}/lab/api/status').then(r => r.status)")
    assert status == 200


@pytest.mark.browser
def test_a_hostile_server_cannot_set_cookies_or_workers(browser: Browser,  # noqa: F811
                                                        server: AtriumServer,
                                                        hostile: str) -> None:
    page = browser.new_context().new_page()
    login(page, server, "bob")
    before = portal_state(page, server)
    tokens_before = server.client("bob").get("/api/v1/tokens").json()
    page.goto(f"{server.url}/instances/{hostile}/lab/hostile/page")
    page.wait_for_url(f"{session_origin(server, hostile)}/**")
    result = run_attack(page)
    assert result["service_worker_root"].startswith("blocked"), result
    assert_nothing_reached_the_portal(result, page, server, before, tokens_before)
    session_cookies = page.context.cookies(session_origin(server, hostile))
    assert not any(c["value"].startswith("planted-by-session") or c["value"] == "planted"
                   for c in session_cookies), session_cookies
    # Clear-Site-Data did not pass: bob's grant for this host is still there.
    assert any(c["name"] == "atrium_instance" for c in session_cookies)

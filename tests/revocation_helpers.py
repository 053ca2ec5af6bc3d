"""Helpers for the revocation tests: logins by cookie, open connections, bounded waits."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
from sqlalchemy import text
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from orchestrator.db import Database
from orchestrator.settings import normalise_database_url
from tests.conftest import AtriumServer
from tests.rfb_client import RfbClient
from tests.session_hosts import LoopbackTransport, enter

WITHIN = 2.0  # seconds: revocation must reach open connections within this


def browser_login(server: AtriumServer, username: str) -> httpx.Client:
    """A cookie login (the demo login form), as a browser holds it."""
    page = httpx.Client(base_url=server.url, follow_redirects=False, timeout=30)
    page.get("/login")
    r = page.post("/login", data={"username": username, "_xsrf": page.cookies["_xsrf"]})
    assert r.status_code == 302 and "atrium_session" in page.cookies, r.text
    return page


def cookie_headers(page: httpx.Client) -> dict[str, str]:
    return {"Cookie": f"atrium_session={page.cookies['atrium_session']}"}


def token_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ws_base(server: AtriumServer) -> str:
    return server.url.replace("http", "ws", 1)


def on_instance_host(server: AtriumServer, uid: str, headers: dict[str, str]
                     ) -> dict[str, str]:
    """The headers that reach instance ``uid`` from 127.0.0.1: a bearer token as it is; a
    browser's portal login (its ``atrium_session`` cookie) traded, as a browser does,
    through the portal's ticket for the instance host's own cookie, sent to that host."""
    found = re.search(r"atrium_session=([^;]+)", headers.get("Cookie", ""))
    if found is None:
        return headers
    with httpx.Client(timeout=30, follow_redirects=False, transport=LoopbackTransport()) as c:
        c.cookies.set("atrium_session", found.group(1), domain="127.0.0.1", path="/")
        r = enter(c, server, uid)
        assert r.status_code < 400, (r.status_code, r.text[:300])
        host = f"{uid}.sessions.localhost"
        grants = [(k.name, k.value) for k in c.cookies.jar
                  if k.domain.lstrip(".").startswith(host) and "atrium_instance" in k.name]
    assert grants, "the instance host set no cookie"
    name, value = grants[0]
    return {"Host": f"{host}:{server.port}", "Cookie": f"{name}={value}"}


async def open_kernel(server: AtriumServer, uid: str, headers: dict[str, str]
                      ) -> WebSocketClientConnection:
    """Start a kernel through the portal's proxy and open its channels WebSocket (a cookie
    login goes through the instance's own host, as a browser's does)."""
    headers = on_instance_host(server, uid, headers)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as c:
        r = await c.post(f"/instances/{uid}/lab/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]
    return await websocket_connect(HTTPRequest(
        f"{ws_base(server)}/instances/{uid}/lab/api/kernels/{kernel}/channels",
        headers=headers))


async def open_desktop(server: AtriumServer, uid: str, headers: dict[str, str]) -> RfbClient:
    headers = on_instance_host(server, uid, headers)
    conn = await websocket_connect(HTTPRequest(
        f"{ws_base(server)}/instances/{uid}/desktop/websockify", headers=headers),
        subprotocols=["binary"])
    client = RfbClient(conn)
    await client._handshake()
    return client


async def closed(conn: WebSocketClientConnection, within: float = WITHIN) -> int | None:
    """Wait (at most ``within`` seconds) for the portal to close ``conn``; its close code.

    Raises TimeoutError when it stays open.
    """
    async def drain() -> None:
        while await conn.read_message() is not None:
            pass

    await asyncio.wait_for(drain(), within)
    return conn.close_code


async def still_open(conn: WebSocketClientConnection, wait: float = 0.5) -> bool:
    """True when ``conn`` delivers no close in ``wait`` seconds (messages are skipped)."""
    try:
        await closed(conn, wait)
    except TimeoutError:
        return True
    return False


async def desktop_closed(client: RfbClient, within: float = WITHIN) -> bool:
    try:
        await closed(client.conn, within)
    except TimeoutError:
        return False
    return True


async def query(server: AtriumServer, sql: str, **params: Any) -> list[Any]:
    """Rows of ``sql`` in the server's database (SQLite or PostgreSQL)."""
    db = Database(normalise_database_url(server.env["ATRIUM_DATABASE_URL"]))
    try:
        async with db.session() as s:
            result = await s.execute(text(sql), params)
            rows = list(result.all()) if result.returns_rows else []
            await s.commit()
            return rows
    finally:
        await db.close()


async def secrets_of(server: AtriumServer, uid: str) -> dict[str, str]:
    rows = await query(server, "SELECT s.jupyter_token, s.vnc_password, i.endpoints FROM "
                               "instance_secrets s JOIN instances i ON i.id = s.instance_id "
                               "WHERE i.uid = :uid", uid=uid)
    token, password, endpoints = rows[0]
    if isinstance(endpoints, str):
        import json

        endpoints = json.loads(endpoints)
    return {"jupyter_token": token, "vnc_password": password, **{
        f"endpoint_{k}": v for k, v in endpoints.items()}}


def set_member(owner: httpx.Client, uid: str, username: str, role: str | None) -> None:
    """Make ``username`` a member with ``role`` (None: not a member)."""
    current = {m["username"]: m["role"] for m in
               owner.get(f"/api/v1/instances/{uid}/members").json()}
    if role is None:
        if username in current:
            assert owner.delete(f"/api/v1/instances/{uid}/members/{username}"
                                ).status_code == 204
        return
    if username in current:
        r = owner.patch(f"/api/v1/instances/{uid}/members/{username}", json={"role": role})
        assert r.status_code == 200, r.text
    else:
        r = owner.post(f"/api/v1/instances/{uid}/members", json={"user": username,
                                                                "role": role})
        assert r.status_code == 201, r.text


def eventually(check: Any, within: float = WITHIN, what: str = "") -> None:
    """Poll ``check()`` until true, at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.05)

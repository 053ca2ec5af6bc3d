"""Remote desktops through Atrium's WebSocket <-> VNC bridge, with a real Xvnc."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator

import httpx
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import AtriumServer
from tests.rfb_client import RfbClient
from tests.sessions import launch_plan, processes_of, wait_for

RIGHT_BUTTON = 4
ESCAPE = 0xFF1B


@pytest.fixture(scope="module")
def desktop(server: AtriumServer) -> Iterator[str]:
    """An openbox desktop of alice's, with bob as a watch-only (GUEST) member."""
    alice = server.client("alice")
    uid = launch_plan(alice, "desk", "Light desktop", ["20261001"])
    assert wait_for(alice, uid, {"ACTIVE"})["ready_protocols"] == ["desktop"]
    r = alice.post(f"/api/v1/instances/{uid}/members", json={"user": "bob", "role": "GUEST"})
    assert r.status_code == 201, r.text
    # bob watches on his own in these tests: let members connect while alice is away.
    r = alice.patch(f"/api/v1/instances/{uid}/sharing",
                    json={"unrestricted_member_access": True})
    assert r.status_code == 200, r.text
    yield uid
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})
    assert processes_of(server.deployment, uid) == []


def bridge_url(server: AtriumServer, uid: str) -> str:
    return server.url.replace("http", "ws") + f"/instances/{uid}/desktop/websockify"


async def changes_after(client: RfbClient, wait: float) -> int:
    """Pixels changed in the next ``wait`` seconds (incremental updates)."""
    changed, deadline = 0, time.monotonic() + wait
    while time.monotonic() < deadline:
        client.request(incremental=True)
        try:
            changed += await client.update(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
    return changed


async def test_owner_input_reaches_the_desktop(server: AtriumServer, desktop: str) -> None:
    owner = await RfbClient.connect(bridge_url(server, desktop), server.token("alice"))
    assert (owner.width, owner.height) == (1280, 800)
    owner.request(incremental=False)
    await owner.update()
    owner.pointer(300, 300, RIGHT_BUTTON)  # openbox opens its root menu
    owner.pointer(300, 300, 0)
    assert await changes_after(owner, 5) > 1000
    owner.key(ESCAPE, True)
    owner.key(ESCAPE, False)
    await changes_after(owner, 1)
    owner.close()


async def test_guest_watches_but_input_is_dropped(server: AtriumServer, desktop: str) -> None:
    guest = await RfbClient.connect(bridge_url(server, desktop), server.token("bob"))
    guest.request(incremental=False)
    await guest.update()
    guest.pointer(300, 300, RIGHT_BUTTON)
    guest.pointer(300, 300, 0)
    guest.key(ord("x"), True)
    guest.key(ord("x"), False)
    assert await changes_after(guest, 2) == 0, "a guest's input reached the VNC server"
    # The guest still sees what the owner does.
    owner = await RfbClient.connect(bridge_url(server, desktop), server.token("alice"))
    owner.pointer(400, 400, RIGHT_BUTTON)
    owner.pointer(400, 400, 0)
    assert await changes_after(guest, 5) > 1000
    owner.key(ESCAPE, True)
    owner.key(ESCAPE, False)
    owner.close()
    guest.close()


@pytest.mark.parametrize("who, status", [("carol", 404), (None, 401)])
async def test_outsiders_get_no_vnc_byte(server: AtriumServer, desktop: str, who: str | None,
                                         status: int) -> None:
    headers = {"Authorization": f"Bearer {server.token(who)}"} if who else {}
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(bridge_url(server, desktop), headers=headers))
    assert err.value.code == status
    page = httpx.get(f"{server.url}/instances/{desktop}/desktop", headers=headers,
                     follow_redirects=False)
    assert page.status_code == (404 if who else 302)


def test_vnc_password_never_reaches_members(server: AtriumServer, desktop: str) -> None:
    from sqlalchemy import create_engine, text

    url = server.env["ATRIUM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://")
    with create_engine(url).connect() as conn:
        password = conn.execute(text(
            "SELECT s.vnc_password FROM instance_secrets s JOIN instances i "
            "ON i.id = s.instance_id WHERE i.uid = :uid"), {"uid": desktop}).scalar_one()
    for who in ("alice", "bob"):
        client = server.client(who)
        for path in (f"/api/v1/instances/{desktop}", f"/instances/{desktop}/desktop",
                     f"/instances/{desktop}"):
            r = client.get(path)
            assert r.status_code == 200 and password not in r.text


def test_keyboard_layout_is_switched_by_full_members_only(server: AtriumServer,
                                                          desktop: str) -> None:
    import json
    import subprocess

    display = json.loads((server.state_dir / "sessions" / desktop / "process.json")
                         .read_text())["display"]
    alice, bob = server.client("alice"), server.client("bob")
    r = alice.post(f"/api/v1/instances/{desktop}/keyboard", json={"layout": "de"})
    assert r.status_code == 200, r.text
    query = subprocess.run(["setxkbmap", "-display", f":{display}", "-query"],
                           capture_output=True, text=True, check=True).stdout
    assert "layout:     de" in query
    assert bob.post(f"/api/v1/instances/{desktop}/keyboard",
                    json={"layout": "fr"}).status_code == 403
    r = alice.post(f"/api/v1/instances/{desktop}/keyboard", json={"layout": "klingon"})
    assert r.status_code == 400 and "unknown keyboard layout" in r.json()["error"]["message"]


# --- the watch-only filter and the bridge's bounds, against the real Xvnc ------------------

def screen_size(server: AtriumServer, uid: str) -> str:
    """The X screen's size as the VNC server's own X display reports it."""
    import json
    import subprocess

    display = json.loads((server.state_dir / "sessions" / uid / "process.json")
                         .read_text())["display"]
    info = subprocess.run(["xdpyinfo", "-display", f":{display}"], capture_output=True,
                          text=True, check=True).stdout
    return next(line.split()[1] for line in info.splitlines() if "dimensions:" in line)


async def closed_with(client: RfbClient) -> int | None:
    """Read until the bridge closes; its close code."""
    while await asyncio.wait_for(client.conn.read_message(), 30) is not None:
        pass
    return client.conn.close_code


GUEST_INPUT = [
    struct.pack(">BxHHBx", 251, 1024, 768, 1) + struct.pack(">IHHHHI", 0, 0, 0, 1024, 768, 0),
    struct.pack(">BxBB", 250, 1, 2),  # XVP shutdown (Xvnc drops a client that sends it)
    struct.pack(">BBHII", 255, 0, 1, ord("x"), 45),  # QEMU extended key event
    struct.pack(">BBH", 255, 1, 0),  # QEMU audio enable
    struct.pack(">BxxxI", 6, 11) + b"guest paste",
    struct.pack(">Bxxxi", 6, -8) + b"\x10\x00\x00\x01abcd",  # extended clipboard
]


async def test_guest_messages_of_every_input_kind_never_reach_the_vnc_server(
        server: AtriumServer, desktop: str) -> None:
    guest = await RfbClient.connect(bridge_url(server, desktop), server.token("bob"))
    guest._send(struct.pack(">BxHii", 2, 2, 0, -308))  # raw + ExtendedDesktopSize
    for message in GUEST_INPUT:
        for i in range(0, len(message), 3):  # split across WebSocket frames
            guest._send(message[i:i + 3])
    guest._send(struct.pack(">BxHi", 2, 1, 0))  # raw only again
    # The server answers an update request after it handled everything sent before it:
    # the guest is still connected (no XVP arrived) and the screen was not resized.
    guest.request(incremental=False)
    await guest.update()
    assert screen_size(server, desktop) == "1280x800"
    guest.close()


async def test_owner_messages_are_forwarded(server: AtriumServer, desktop: str) -> None:
    owner = await RfbClient.connect(bridge_url(server, desktop), server.token("alice"))
    owner._send(struct.pack(">BxHii", 2, 2, 0, -308))
    owner._send(GUEST_INPUT[0])  # SetDesktopSize 1024x768
    try:
        deadline = time.monotonic() + 30
        while screen_size(server, desktop) != "1024x768":
            assert time.monotonic() < deadline, "the owner's SetDesktopSize did not arrive"
            await asyncio.sleep(0.1)
    finally:
        owner._send(struct.pack(">BxHHBx", 251, 1280, 800, 1)
                    + struct.pack(">IHHHHI", 0, 0, 0, 1280, 800, 0))
    deadline = time.monotonic() + 30
    while screen_size(server, desktop) != "1280x800":
        assert time.monotonic() < deadline, "the desktop did not return to 1280x800"
        await asyncio.sleep(0.1)
    # XVP is forwarded for the owner; this Xvnc does not speak it and drops the client.
    owner._send(GUEST_INPUT[1])
    assert await closed_with(owner) == 1000


async def test_a_guests_paste_is_read_past_not_held(server: AtriumServer, desktop: str
                                                    ) -> None:
    """A 64 MiB clipboard message from a guest, in 32 KiB frames: the portal's peak memory
    does not grow with it, and the connection keeps working after it."""
    from tests.test_limits import peak_rss, reset_peak_rss

    guest = await RfbClient.connect(bridge_url(server, desktop), server.token("bob"))
    size, frame = 64 * 1024 * 1024, b"p" * 32768
    before = reset_peak_rss(server)
    guest._send(struct.pack(">Bxxxi", 6, size))
    for _ in range(size // len(frame)):
        await guest.conn.write_message(frame, binary=True)
    guest.request(incremental=False)  # answered once the bridge has read past the paste
    await guest.update(timeout=60)
    assert peak_rss(server) - before < 32 * 1024 * 1024
    guest.close()
    # A full member's paste over the cap (ATRIUM_CLIPBOARD_MAX, 1 MiB) is dropped too.
    owner = await RfbClient.connect(bridge_url(server, desktop), server.token("alice"))
    owner._send(struct.pack(">BxxxI", 6, 2 * 1024 * 1024))
    for _ in range(64):
        await owner.conn.write_message(frame, binary=True)
    owner.request(incremental=False)
    await owner.update()
    owner.close()


@pytest.mark.parametrize("message, code", [
    (bytes([253, 0, 0, 4, 0, 0, 0, 0]), 1003),  # gii: not understood, the stream ends
    (bytes([5]) * (64 * 1024 + 1), 1009),  # one frame over ATRIUM_WS_MAX_MESSAGE
])
async def test_unknown_types_and_oversized_frames_close_the_bridge(
        server: AtriumServer, desktop: str, message: bytes, code: int) -> None:
    for who in ("bob", "alice"):
        client = await RfbClient.connect(bridge_url(server, desktop), server.token(who))
        client._send(message)
        assert await closed_with(client) == code

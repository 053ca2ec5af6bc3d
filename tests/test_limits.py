"""Bounded resources, attacked through a real portal with real JupyterLabs (issue 14):
request bodies, body and idle timeouts, WebSocket message sizes, upstream connections per
instance and open connections per user. Memory is measured (the portal's RSS from /proc),
never time."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.sessions import launch, run_code, wait_for

MiB = 1024 * 1024
SLOTS = 20  # ATRIUM_INSTANCE_CONNECTIONS of this server
USER_CAP = 230  # ATRIUM_USER_CONNECTIONS


@pytest.fixture(scope="module")
def bounded(databases: Databases, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[AtriumServer]:
    """A portal whose shared upstream pool (100) is smaller than the slow requests below, as
    1000 is smaller than a determined user's: only per-instance slots keep others going."""
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("bounded"),
                       ATRIUM_UPSTREAM_CONNECTIONS="100", ATRIUM_INSTANCE_CONNECTIONS=str(SLOTS),
                       ATRIUM_INSTANCE_QUEUE="400", ATRIUM_USER_CONNECTIONS=str(USER_CAP),
                       ATRIUM_BODY_TIMEOUT="3", ATRIUM_IDLE_TIMEOUT="3")
    srv.cli("demo", "--seed-only")
    srv.start()
    yield srv
    srv.stop()
    cleanup_sessions(srv)


@pytest.fixture(scope="module")
def labs(bounded: AtriumServer) -> tuple[str, str]:
    """Two running JupyterLabs of alice's."""
    alice = bounded.client("alice")
    uids = launch(alice, "lab a"), launch(alice, "lab b")
    for uid in uids:
        wait_for(alice, uid, {"ACTIVE"})
    return uids


def _status(srv: AtriumServer, field: str) -> int:
    assert srv.proc is not None
    status = open(f"/proc/{srv.proc.pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith(f"{field}:"))) * 1024


def reset_peak_rss(srv: AtriumServer) -> int:
    """Restart the portal's peak-memory count (Linux clear_refs); its memory now."""
    assert srv.proc is not None
    with open(f"/proc/{srv.proc.pid}/clear_refs", "w") as f:
        f.write("5")
    return _status(srv, "VmRSS")


def peak_rss(srv: AtriumServer) -> int:
    """The portal's highest resident memory since :func:`reset_peak_rss`."""
    return _status(srv, "VmHWM")


def sockets_of(srv: AtriumServer) -> int:
    """Open sockets (TCP or Unix) of the portal process."""
    assert srv.proc is not None
    fd_dir = f"/proc/{srv.proc.pid}/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            count += os.readlink(f"{fd_dir}/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def connect(srv: AtriumServer, head: str, body: bytes = b"", timeout: float = 30
            ) -> socket.socket:
    """A raw connection that has sent ``head`` (request line and headers) and ``body``."""
    parts = urlsplit(srv.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def answer(sock: socket.socket) -> tuple[int, bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def request_head(method: str, path: str, length: int, token: str | None = None,
                 extra: str = "") -> str:
    auth = f"Authorization: Bearer {token}\n" if token else ""
    return (f"{method} {path} HTTP/1.1\nHost: 127.0.0.1\n{auth}"
            f"Content-Type: application/json\nContent-Length: {length}\n{extra}")


def json_error(status: int, body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert error["status"] == status
    return dict(error)


def test_a_huge_declared_body_is_refused_at_once_and_memory_stays_flat(
        bounded: AtriumServer, labs: tuple[str, str]) -> None:
    lab = labs[0]
    routes = ["/api/v1/instances", "/api/v1/tokens", "/login", "/logout", "/",
              "/api/v1/admin/catalogue", "/api/v1/nowhere", f"/api/v1/instances/{lab}/members",
              f"/instances/{lab}/lab/api/contents/x.txt"]  # the proxy, not authorised
    assert answer(connect(bounded, request_head("GET", "/healthz", 0)))[0] == 200
    before = reset_peak_rss(bounded)
    junk = b"\x00" * MiB
    for path in routes:
        for token in (None, bounded.token("bob")):  # anonymous; a user but not a member
            sock = connect(bounded, request_head("POST", path, 4 * 1024**3, token))
            status, body = answer(sock)  # before a single body byte was sent
            assert status == 413, (path, body)
            assert "too large" in json_error(413, body)["message"]
            try:  # the refused client sends on regardless: read past, never kept
                for _ in range(16):
                    sock.sendall(junk)
            except OSError:
                pass
            sock.close()
    # 18 requests x 16 MiB were offered; the portal kept none of it.
    assert peak_rss(bounded) - before < 32 * MiB, (before, peak_rss(bounded))
    # Expect: 100-continue gets the refusal instead of a go-ahead.
    sock = connect(bounded, request_head("PUT", "/api/v1/me", 50 * MiB,
                                         extra="Expect: 100-continue\n"))
    assert answer(sock)[0] == 413
    assert httpx.get(f"{bounded.url}/healthz").status_code == 200


def test_bodies_up_to_the_limit_are_read(bounded: AtriumServer) -> None:
    alice = bounded.client("alice")
    r = alice.post("/api/v1/instances", content=b" " * MiB + b"{not json")
    assert r.status_code == 413 and r.json()["error"]["status"] == 413
    r = alice.post("/api/v1/instances", content=b"{not json" + b" " * (MiB - 9))
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    # A chunked body announces no length: Tornado cuts it off at the bound (400, closed).
    sock = connect(bounded, "POST /api/v1/instances HTTP/1.1\nHost: 127.0.0.1\n"
                            "Transfer-Encoding: chunked\n", f"{2 * MiB:x}\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    assert sock.recv(100) == b""


def test_slow_clients_are_cut_off_by_the_body_and_idle_timeouts(bounded: AtriumServer
                                                               ) -> None:
    # Half a body, then silence: the connection is closed (ATRIUM_BODY_TIMEOUT=3).
    sock = connect(bounded, request_head("POST", "/api/v1/instances", 1000), b"{")
    assert sock.recv(1) == b""
    # Half the headers, then silence (ATRIUM_IDLE_TIMEOUT=3).
    parts = urlsplit(bounded.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert sock.recv(1) == b""


def test_an_owner_uploads_300_mib_into_her_lab(bounded: AtriumServer, labs: tuple[str, str]
                                              ) -> None:
    """The lab proxy lifts the 1 MiB bound for the authorised owner and streams the body
    (JupyterLab's contents API: one PUT of a 300 MiB text file)."""
    size = 300 * MiB
    head = b'{"type": "file", "format": "text", "content": "'
    tail = b'"}'
    piece = b"a" * MiB

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // MiB):
            yield piece
        yield tail

    before = reset_peak_rss(bounded)
    with httpx.Client(base_url=bounded.url, timeout=300, headers={
            "Authorization": f"Bearer {bounded.token('alice')}"}) as client:
        r = client.put(f"/instances/{labs[0]}/lab/api/contents/big.txt", content=body(),
                       headers={"Content-Length": str(len(head) + size + len(tail))})
        assert r.status_code in (200, 201), r.text
        grown = peak_rss(bounded) - before
        r = client.get(f"/instances/{labs[0]}/lab/api/contents/big.txt",
                       params={"content": "0"})
        assert r.status_code == 200 and r.json()["size"] == size
    assert grown < 64 * MiB, grown  # streamed, not held


def slow_upload(srv: AtriumServer, uid: str, n: int, token: str) -> socket.socket:
    """A PUT into the lab whose body never finishes (until :func:`finish_upload`)."""
    content = json.dumps({"type": "file", "format": "text", "content": f"slow {n}"}).encode()
    sock = connect(srv, request_head("PUT", f"/instances/{uid}/lab/api/contents/slow{n}.txt",
                                     len(content), token), content[:10])
    sock.settimeout(120)
    return sock


def finish_upload(sock: socket.socket, n: int) -> None:
    content = json.dumps({"type": "file", "format": "text", "content": f"slow {n}"}).encode()
    sock.sendall(content[10:])


def wait_until(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_slow_requests_to_one_instance_do_not_starve_another(
        bounded: AtriumServer, labs: tuple[str, str]) -> None:
    """200 uploads into lab A that never end (a real JupyterLab waiting for the rest of
    each body) hold A's 20 upstream slots; lab B, behind the same portal and upstream
    pool of 100, still answers."""
    a, b = labs
    token = bounded.token("alice")
    alice = bounded.client("alice")
    assert alice.get(f"/instances/{b}/lab/api/status").status_code == 200
    baseline = sockets_of(bounded)
    slow = [slow_upload(bounded, a, n, token) for n in range(200)]
    # Every slow client is connected and A's slots are taken (20 sockets upstream).
    wait_until(lambda: sockets_of(bounded) >= baseline + 200 + SLOTS - 3, "the slow requests")
    r = alice.get(f"/instances/{b}/lab/api/contents", timeout=60)
    assert r.status_code == 200, r.text
    # No more than A's slots went upstream (no other request is in flight now).
    assert sockets_of(bounded) <= baseline + 200 + SLOTS + 10
    # The waiting requests were queued, not dropped: each one completes when let go.
    for n, sock in enumerate(slow):
        finish_upload(sock, n)
    statuses = [answer(sock)[0] for sock in slow]
    assert set(statuses) == {201}, statuses
    for sock in slow:
        sock.close()
    names = {f["name"] for f in alice.get(f"/instances/{a}/lab/api/contents").json()["content"]}
    assert {f"slow{n}.txt" for n in range(200)} <= names


async def test_open_connections_per_user_are_capped(bounded: AtriumServer,
                                                    labs: tuple[str, str]) -> None:
    a, b = labs
    token = bounded.token("alice")
    headers = {"Authorization": f"Bearer {token}"}
    slow = [slow_upload(bounded, b, n, token) for n in range(USER_CAP - 1)]
    ws_url = bounded.url.replace("http", "ws") + f"/instances/{a}/lab/api/events/subscribe"
    events = await websocket_connect(HTTPRequest(ws_url, headers=headers))  # the last one
    status = f"{bounded.url}/instances/{a}/lab/api/status"
    # Once the portal has taken in every slow upload, the next connection is one too many.
    wait_until(lambda: httpx.get(status, headers=headers).status_code == 429, "the cap")
    r = httpx.get(status, headers=headers)
    assert r.status_code == 429 and "too many open connections" in r.json()["error"]["message"]
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(ws_url, headers=headers))
    assert err.value.code == 429
    assert httpx.get(status, headers={
        "Authorization": f"Bearer {bounded.token('admin')}"}).status_code != 429
    # The portal's own API is not counted.
    assert httpx.get(f"{bounded.url}/api/v1/me", headers=headers).status_code == 200
    # Closing connections gives them back.
    events.close()
    slow.pop().close()
    wait_until(lambda: httpx.get(f"{bounded.url}/instances/{a}/lab/api/status",
                                 headers=headers).status_code == 200, "a free connection")
    for sock in slow:
        sock.close()


async def test_lab_messages_may_exceed_the_portals_own_limit(bounded: AtriumServer,
                                                            labs: tuple[str, str]) -> None:
    """The kernel relay has its own (documented) limit, above the portal's 64 KiB."""
    code = f"len('{'x' * 512 * 1024}')"
    assert await run_code(bounded.url, labs[0], bounded.token("alice"), code) == str(512 * 1024)

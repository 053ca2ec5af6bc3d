"""Escapes from a local session's sandbox: run as code in alice's real session, through the
proxy, while bob runs a session too. The attempts live in tests/escapes.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import AtriumServer, Databases, cleanup_sessions, need
from tests.escapes import ATTEMPTS, PRELUDE, Attempt
from tests.sessions import launch, launch_plan, processes_of, run_code, wait_for

PIDS_MAX = 300
ROOT = Path(__file__).resolve().parent.parent


def tiny_catalogue() -> str:
    """The default catalogue plus a 640 MiB flavour and its JupyterLab plan."""
    import yaml

    doc = yaml.safe_load((ROOT / "images" / "catalog.yaml").read_text())
    doc["flavours"].append({"name": "tiny", "cpus": 0.5, "memory_mb": 640})
    doc["plans"].append({"image": "JupyterLab", "flavour": "tiny", "backend": "local"})
    return str(yaml.safe_dump(doc))


def _sandbox_possible() -> bool:
    from spawners.sandbox import unavailable_reason

    return unavailable_reason() == ""


@pytest.fixture(scope="module")
def sandboxed(databases: Databases, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[AtriumServer, dict[str, Any]]]:
    """A portal (small pids limit, a tiny flavour), alice's and bob's running sessions."""
    need(_sandbox_possible(), "sandboxing needs root and bubblewrap")
    state = tmp_path_factory.mktemp("escapes")
    srv = AtriumServer(databases.new(), state, ATRIUM_LOCAL_PIDS_MAX=str(PIDS_MAX))
    srv.cli("demo", "--seed-only")
    (state / "tiny.yaml").write_text(tiny_catalogue())
    srv.cli("catalog", "apply", str(state / "tiny.yaml"))
    srv.start()
    try:
        alice, bob = srv.client("alice"), srv.client("bob")
        mine = launch(alice, "escape-room", ["20261001"])
        theirs = launch_plan(bob, "bystander", "Light desktop", ["20261003"])
        wait_for(alice, mine, {"ACTIVE"})
        wait_for(bob, theirs, {"ACTIVE"})
        bob_lab = launch(bob, "bystander-lab", ["20261003"])
        wait_for(bob, bob_lab, {"ACTIVE"})
        home = srv.state_dir / "sessions" / mine / "home"  # on the host
        run_base = Path("/run/atrium")
        context = {
            "cookie": srv.state_dir / "cookie_secret",
            "database": (srv.env["ATRIUM_DATABASE_URL"].split("///", 1)[1]
                         if srv.env["ATRIUM_DATABASE_URL"].startswith("sqlite")
                         else srv.state_dir / "atrium.db"),
            "state_dir": srv.state_dir,
            "sessions_dir": srv.state_dir / "sessions",
            "bob_home": srv.state_dir / "sessions" / theirs / "home",
            "bob_run": run_base / f"{srv.deployment}.{theirs}",
            "data_root": srv.state_dir / "demo-data",
            "chosen": "20261001", "not_chosen": "20261002", "bobs_data": "20261003",
            "home": "/home/alice",
            "portal_pid": srv.proc.pid if srv.proc else 0, "portal_port": srv.port,
            "uid": home.stat().st_uid, "gid": home.stat().st_gid,
            "mine": mine, "theirs": theirs, "bob_lab": bob_lab,
        }
        yield srv, context
    finally:
        srv.stop()
        cleanup_sessions(srv)


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.name for a in ATTEMPTS])
async def test_escape_attempt_fails(sandboxed: tuple[AtriumServer, dict[str, Any]],
                                    attempt: Attempt) -> None:
    srv, ctx = sandboxed
    assert (srv.state_dir / "sessions" / ctx["theirs"]).is_dir()  # bob's session is there
    code = PRELUDE + attempt.code.format(**ctx)
    try:
        result = await run_code(srv.url, ctx["mine"], srv.token("alice"), code)
    finally:
        _shut_kernels(srv, ctx["mine"], "alice")
    expect = attempt.expect.format(**ctx)
    assert (expect in result) if attempt.contains else (result == expect), \
        f"{attempt.name}: got {result!r}, expected {expect!r}"


def _shut_kernels(srv: AtriumServer, uid: str, who: str) -> None:
    """Each run_code starts a kernel: end them, or they would fill the pids limit."""
    client = srv.client(who)
    for kernel in client.get(f"/instances/{uid}/lab/api/kernels").json():
        client.delete(f"/instances/{uid}/lab/api/kernels/{kernel['id']}")


def test_identity_is_the_owners_and_not_the_portals(
        sandboxed: tuple[AtriumServer, dict[str, Any]]) -> None:
    _, ctx = sandboxed
    assert ctx["uid"] not in (0, os.getuid()) and ctx["uid"] >= 20000
    bob_home = Path(ctx["bob_home"])
    assert bob_home.stat().st_uid not in (0, ctx["uid"])  # bob's sessions run as bob
    assert oct(bob_home.stat().st_mode & 0o777) == "0o700"


def test_portal_files_are_private(sandboxed: tuple[AtriumServer, dict[str, Any]]) -> None:
    srv, ctx = sandboxed
    assert srv.state_dir.stat().st_mode & 0o777 == 0o700
    assert Path(ctx["cookie"]).stat().st_mode & 0o777 == 0o600
    url = srv.env["ATRIUM_DATABASE_URL"]
    if url.startswith("sqlite"):
        assert Path(url.split("///", 1)[1]).stat().st_mode & 0o777 == 0o600


def test_sessions_listen_on_no_tcp_port(sandboxed: tuple[AtriumServer, dict[str, Any]]) -> None:
    """Every listening socket of the sessions is a Unix socket in a 0700 directory."""
    srv, ctx = sandboxed
    for uid in (ctx["mine"], ctx["theirs"]):
        info = json.loads((srv.state_dir / "sessions" / uid / "process.json").read_text())
        assert all(e.startswith("unix:/") for e in info["endpoints"].values()), info
        run = Path(ctx["bob_run"]).parent / f"{srv.deployment}.{uid}"
        assert run.stat().st_mode & 0o777 == 0o700
    # A host process of the sessions' uid namespace has no TCP listener: the sockets of
    # every session process live in private network namespaces.
    host_net = os.readlink("/proc/self/ns/net")
    for uid in (ctx["mine"], ctx["theirs"]):
        for pid in processes_of(srv.deployment, uid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                net = os.readlink(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            if "\nUid:\t0\t" in status:
                continue  # the launcher / bwrap before it enters the namespaces
            assert net != host_net, f"process {pid} of {uid} shares the host network"


def test_desktop_session_runs_sandboxed(sandboxed: tuple[AtriumServer, dict[str, Any]]) -> None:
    """bob's desktop (X server, window manager) runs as bob, in one sandbox's namespaces."""
    srv, ctx = sandboxed
    uid = Path(ctx["bob_home"]).stat().st_uid
    seen: dict[str, tuple[str, ...]] = {}
    for pid in processes_of(srv.deployment, ctx["theirs"]):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            status = Path(f"/proc/{pid}/status").read_text()
            spaces = tuple(os.readlink(f"/proc/{pid}/ns/{n}") for n in ("mnt", "pid", "net", "ipc"))
        except OSError:
            continue
        if comm in ("Xvnc", "openbox"):
            assert f"\nUid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, (comm, status)
            assert "\nCapEff:\t0000000000000000" in status
            seen[comm] = spaces
    assert set(seen) == {"Xvnc", "openbox"}
    assert seen["Xvnc"] == seen["openbox"]
    mine = tuple(os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "pid", "net", "ipc"))
    assert all(a != b for a, b in zip(seen["Xvnc"], mine, strict=True))


async def _execute_without_reply(base: str, uid: str, token: str, code: str) -> None:
    """Send ``code`` to a new kernel; return once the kernel started running it (it is
    about to die, so no reply is awaited)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
        r = await c.post(f"/instances/{uid}/lab/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]
    conn = await websocket_connect(HTTPRequest(
        base.replace("http", "ws", 1) + f"/instances/{uid}/lab/api/kernels/{kernel}/channels",
        headers=headers))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t",
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False}}))
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(conn.read_message(), 5)
            except TimeoutError:
                continue
            assert raw is not None, "the kernel WebSocket closed before running the code"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") == msg_id and \
                    msg["header"]["msg_type"] in ("execute_input", "status"):
                return
            if msg["header"]["msg_type"] == "status" and \
                    msg["content"].get("execution_state") in ("restarting", "dead"):
                return  # killed before its own messages left it: what the caller waits for
        # The kernel may be killed before its IOPub thread sent anything: the caller's
        # check of the instance's reason decides.
    finally:
        conn.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_memory_past_the_flavour_is_killed_inside(
        sandboxed: tuple[AtriumServer, dict[str, Any]]) -> None:
    srv, ctx = sandboxed
    alice, bob = srv.client("alice"), srv.client("bob")
    tiny = launch(alice, "tiny", ["20261001"], plan=plan_id_by_flavour(alice, "tiny"))
    wait_for(alice, tiny, {"ACTIVE"})
    assert srv.proc is not None
    portal_rss = _rss_kib(srv.proc.pid)
    # 1 GiB written byte by byte into a 640 MiB flavour.
    await _execute_without_reply(srv.url, tiny, srv.token("alice"),
                                 "x = bytearray(b'\\x01') * (1024 * 2**20)")
    deadline = time.monotonic() + 90
    reason = ""
    while time.monotonic() < deadline and "memory limit" not in reason:
        reason = alice.get(f"/api/v1/instances/{tiny}").json()["reason"]
        await asyncio.sleep(0.5)
    assert "the flavour's memory limit (640 MiB) was reached" in reason
    # The portal and bob's session are untouched; alice's session still answers.
    assert srv.proc.poll() is None
    assert _rss_kib(srv.proc.pid) < portal_rss + 200 * 1024
    assert await run_code(srv.url, ctx["bob_lab"], srv.token("bob"), "6*7") == "42"
    _shut_kernels(srv, ctx["bob_lab"], "bob")
    assert bob.get(f"/api/v1/instances/{ctx['theirs']}").json()["status"] == "ACTIVE"
    assert await run_code(srv.url, tiny, srv.token("alice"), "1+1") == "2"
    alice.delete(f"/api/v1/instances/{tiny}")
    wait_for(alice, tiny, {"DELETED"})


def plan_id_by_flavour(client: httpx.Client, flavour: str) -> int:
    return next(p["id"] for p in client.get("/api/v1/plans").json()
                if p["flavour"]["name"] == flavour)


async def test_fork_bomb_is_bounded_by_the_pids_limit(
        sandboxed: tuple[AtriumServer, dict[str, Any]]) -> None:
    srv, ctx = sandboxed
    code = PRELUDE + """
import time
pids, err = [], None
for _ in range(5000):
    try:
        pid = os.fork()
    except OSError as e:
        err = e
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    pids.append(pid)
for p in pids:
    os.kill(p, 9)
for p in pids:
    os.waitpid(p, 0)
print(len(pids) < PIDS_MAX, type(err).__name__)
""".replace("PIDS_MAX", str(PIDS_MAX))
    assert await run_code(srv.url, ctx["mine"], srv.token("alice"), code) == \
        "True BlockingIOError"
    # Bob's session did not feel it; alice's kernel still runs code.
    assert await run_code(srv.url, ctx["bob_lab"], srv.token("bob"), "6*7") == "42"
    assert await run_code(srv.url, ctx["mine"], srv.token("alice"), "6*7") == "42"
    _shut_kernels(srv, ctx["mine"], "alice")
    _shut_kernels(srv, ctx["bob_lab"], "bob")


def test_deleted_session_leaves_no_cgroup_or_socket_dir(
        sandboxed: tuple[AtriumServer, dict[str, Any]]) -> None:
    srv, _ = sandboxed
    alice = srv.client("alice")
    uid = launch(alice, "short-lived", ["20261001"])
    wait_for(alice, uid, {"ACTIVE"})
    name = f"{srv.deployment}.{uid}"
    groups = [Path(p) / "atrium" / name for p in ("/sys/fs/cgroup/memory",
                                                  "/sys/fs/cgroup/pids")]
    assert all(g.is_dir() for g in groups if g.parent.parent.is_dir())
    assert (Path("/run/atrium") / name / "jupyter.sock").exists()
    alice.delete(f"/api/v1/instances/{uid}")
    wait_for(alice, uid, {"DELETED"})
    assert processes_of(srv.deployment, uid) == []
    assert not any(g.exists() for g in groups)
    assert not (Path("/run/atrium") / name).exists()

"""The walking skeleton end to end: real server, real JupyterLab, through Atrium's proxy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.conftest import AtriumServer
from tests.session_hosts import browser_client, follow
from tests.sessions import launch, processes_of, run_code, wait_for


@pytest.fixture(scope="module")
def alice(server: AtriumServer) -> httpx.Client:
    return server.client("alice")


@pytest.fixture(scope="module")
def bob(server: AtriumServer) -> httpx.Client:
    return server.client("bob")


@pytest.fixture(scope="module")
def running(server: AtriumServer, alice: httpx.Client) -> str:
    """One ACTIVE instance of alice's with experiment 20261001 mounted."""
    uid = launch(alice, "skeleton", ["20261001"])
    data = wait_for(alice, uid, {"ACTIVE"})
    assert data["seen"][-1] == "ACTIVE"
    return uid


async def test_kernel_runs_code_through_the_proxy(server: AtriumServer, running: str) -> None:
    token = server.token("alice")
    assert await run_code(server.url, running, token, "6*7") == "42"


def test_experiment_data_is_mounted_read_only(server: AtriumServer, alice: httpx.Client,
                                              running: str) -> None:
    base = f"/instances/{running}/lab/api/contents/data/20261001"
    r = alice.get(f"{base}/raw/run_0001.csv", params={"content": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["content"].startswith("q,intensity\n")
    assert r.json()["writable"] is False
    r = alice.put(f"{base}/raw/new.txt", json={"type": "file", "format": "text",
                                               "content": "x"})
    assert r.status_code >= 400
    assert not (server.state_dir / "demo-data" / "20261001" / "raw" / "new.txt").exists()


async def test_kernel_cannot_write_experiment_data(server: AtriumServer, running: str) -> None:
    token = server.token("alice")
    out = await run_code(server.url, running, token,
                         "open('data/20261001/raw/evil.txt', 'w')")
    assert out.startswith("OSError") and "Read-only file system" in out
    assert not (server.state_dir / "demo-data" / "20261001" / "raw" / "evil.txt").exists()


def test_lab_page_does_not_leak_the_instance_token(server: AtriumServer, alice: httpx.Client,
                                                   running: str) -> None:
    r = alice.get(f"/instances/{running}/lab/lab")
    assert r.status_code == 200
    assert "jupyter-config-data" in r.text
    match = re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', r.text, re.S)
    assert match is not None
    assert json.loads(match.group(1))["token"] == ""


def test_outsider_and_anonymous_are_refused(server: AtriumServer, bob: httpx.Client,
                                            running: str) -> None:
    assert bob.get(f"/api/v1/instances/{running}").status_code == 404
    assert bob.post(f"/api/v1/instances/{running}/stop").status_code == 404
    assert bob.delete(f"/api/v1/instances/{running}").status_code == 404
    r = bob.get(f"/instances/{running}/lab/api/status")
    assert r.status_code in (403, 404) and "error" in r.json()
    anon = httpx.Client(base_url=server.url)
    r = anon.get(f"/api/v1/instances/{running}")
    assert r.status_code == 401 and "message" in r.json()["error"]
    # A browser without a login goes through the instance's host to the login page.
    _, seen = follow(browser_client(server), f"{server.url}/instances/{running}/lab/lab")
    assert seen[-1].startswith(f"{server.url}/login?next="), seen
    assert all(running not in i["uid"] for i in bob.get("/api/v1/instances").json())


@pytest.mark.parametrize("who", ["bob", None])
async def test_outsider_websocket_is_refused(server: AtriumServer, running: str,
                                             who: str | None) -> None:
    headers = {"Authorization": f"Bearer {server.token(who)}"} if who else {}
    url = server.url.replace("http", "ws") + f"/instances/{running}/lab/api/events/subscribe"
    with pytest.raises(HTTPClientError) as err:
        await websocket_connect(HTTPRequest(url, headers=headers))
    assert err.value.code == (404 if who else 401)


def test_bad_input_is_refused_and_creates_nothing(server: AtriumServer, alice: httpx.Client
                                                  ) -> None:
    before = {i["uid"] for i in alice.get("/api/v1/instances").json()}
    sessions_before = set((server.state_dir / "sessions").glob("*"))
    mine = {e["proposal"]: e["id"] for e in alice.get("/api/v1/experiments").json()}
    preset = next(p["id"] for p in alice.get("/api/v1/plans").json() if p["preset"])
    bobs = server.client("bob").get("/api/v1/experiments").json()[0]["id"]
    cases = [
        ({"name": "x", "plan_id": 99999, "experiment_ids": []}, 404, "unknown plan"),
        ({"name": "x", "plan_id": preset, "experiment_ids": [bobs]}, 403, "not a member"),
        ({"name": "x" * 10_000, "plan_id": preset, "experiment_ids": [mine["20261001"]]},
         400, "at most 100"),
        ({"name": "", "plan_id": preset}, 400, "name"),
        ({"name": "x", "plan_id": "1"}, 400, "integer"),
        ({"name": "x", "plan_id": preset, "experiment_ids": "20261001"}, 400, "list"),
    ]
    for body, status, words in cases:
        r = alice.post("/api/v1/instances", json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["error"]["message"]
    r = alice.post("/api/v1/instances", content=b"{not json",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = alice.post("/api/v1/instances", content=b"[1, 2]")
    assert r.status_code == 400
    r = alice.post("/api/v1/nonsense")
    assert r.status_code == 404 and r.json()["error"]["status"] == 404
    assert {i["uid"] for i in alice.get("/api/v1/instances").json()} == before
    assert set((server.state_dir / "sessions").glob("*")) == sessions_before


def test_stop_start_delete_leave_no_process(server: AtriumServer, alice: httpx.Client) -> None:
    uid = launch(alice, "lifecycle", ["20261002"])
    wait_for(alice, uid, {"ACTIVE"})
    assert processes_of(server.deployment, uid)
    assert alice.post(f"/api/v1/instances/{uid}/stop").status_code == 202
    wait_for(alice, uid, {"STOPPED"})
    assert processes_of(server.deployment, uid) == []
    r = alice.get(f"/instances/{uid}/lab/api/status")
    assert r.status_code == 503
    assert alice.post(f"/api/v1/instances/{uid}/start").status_code == 202
    wait_for(alice, uid, {"ACTIVE"})
    assert alice.get(f"/instances/{uid}/lab/api/status").status_code == 200
    assert alice.post(f"/api/v1/instances/{uid}/reboot").status_code == 202
    wait_for(alice, uid, {"REBOOTING", "STARTING"}, timeout=30)
    wait_for(alice, uid, {"ACTIVE"})
    assert alice.delete(f"/api/v1/instances/{uid}").status_code == 202
    wait_for(alice, uid, {"DELETED"})
    assert processes_of(server.deployment, uid) == []
    assert not (server.state_dir / "sessions" / uid).exists()
    events = [e["kind"] for e in server.client("admin").get(
        f"/api/v1/instances/{uid}/events").json()]
    assert events[:3] == ["launched", "active", "stop"] and events[-1] == "deleted"


def test_openapi_document_lists_the_endpoints(server: AtriumServer) -> None:
    doc = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/instances", "/instances/{uid}", "/plans", "/experiments", "/me"} <= set(doc["paths"])
    sharing = {"/instances/{uid}/members", "/instances/{uid}/invitations",
               "/invitations/{token}", "/instances/{uid}/access-requests",
               "/instances/{uid}/support", "/instances/{uid}/keyboard"}
    assert sharing <= set(doc["paths"])
    # Every reference resolves.
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])


def test_data_folder_exists(server: AtriumServer) -> None:
    assert Path(server.state_dir / "demo-data" / "20261001" / "raw" / "run_0001.csv").exists()


async def test_large_download_streams_through_the_proxy(server: AtriumServer, running: str
                                                        ) -> None:
    """Bodies beyond the HTTP client's 100 MiB default pass whole (streamed, not buffered)."""
    size = 130 * 2**20
    token = server.token("alice")
    out = await run_code(server.url, running, token,
                         f"f = open('big.bin', 'wb'); f.truncate({size}); f.close(); 'ok'")
    assert out == "'ok'"
    received = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        async with client.stream("GET", f"/instances/{running}/lab/files/big.bin") as r:
            assert r.status_code == 200
            assert int(r.headers["content-length"]) == size
            async for chunk in r.aiter_raw():
                received += len(chunk)
    assert received == size

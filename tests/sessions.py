"""Helpers for tests that drive real sessions through Atrium."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from spawners.localproc import labelled_processes

SETTLED = {"ACTIVE", "STOPPED", "ERROR", "DELETED", "PARTIALLY_ACTIVE"}


def wait_for(client: httpx.Client, uid: str, wanted: set[str], timeout: float = 90) -> dict:
    """Poll the API until the instance's status is in ``wanted``; fail on an unexpected end."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        r = client.get(f"/api/v1/instances/{uid}")
        if r.status_code == 404 and "DELETED" in wanted:
            return {"status": "DELETED"}
        assert r.status_code == 200, r.text
        data = r.json()
        if not seen or seen[-1] != data["status"]:
            seen.append(data["status"])
        if data["status"] in wanted:
            data["seen"] = seen
            return data
        if data["status"] in SETTLED and data["status"] not in wanted and \
                data["status"] == "ERROR":
            raise AssertionError(f"instance {uid} failed: {data['reason']}")
        time.sleep(0.1)
    raise AssertionError(f"instance {uid} did not reach {wanted}; saw {seen}")


def launch(client: httpx.Client, name: str, experiments: list[str] | None = None,
           plan: int | None = None) -> str:
    mine = {e["proposal"]: e["id"] for e in client.get("/api/v1/experiments").json()}
    plans = client.get("/api/v1/plans").json()
    plan_id = plan if plan is not None else next(p["id"] for p in plans if p["preset"])
    r = client.post("/api/v1/instances", json={
        "name": name, "plan_id": plan_id,
        "experiment_ids": [mine[p] for p in experiments or []]})
    assert r.status_code == 201, r.text
    return str(r.json()["uid"])


def processes_of(deployment: str, uid: str) -> list[int]:
    return labelled_processes(deployment).get(uid, [])


async def run_code(base_url: str, uid: str, token: str, code: str, timeout: float = 60) -> str:
    """Start a kernel through Atrium's proxy, run ``code`` over the WebSocket, return its
    ``text/plain`` result (or the error's ``ename: evalue``)."""
    import httpx as _httpx

    headers = {"Authorization": f"Bearer {token}"}
    async with _httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as c:
        r = await c.post(f"/instances/{uid}/lab/api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]
    ws_url = (base_url.replace("http", "ws", 1)
              + f"/instances/{uid}/lab/api/kernels/{kernel}/channels")
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    try:
        msg_id = uuid.uuid4().hex
        conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(conn.read_message(), timeout)
            assert raw is not None, "the kernel WebSocket closed"
            msg: dict[str, Any] = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "execute_result":
                return str(msg["content"]["data"]["text/plain"])
            if kind == "error":
                return f"{msg['content']['ename']}: {msg['content']['evalue']}"
            if kind == "stream":
                return str(msg["content"]["text"]).strip()
        raise AssertionError("no result from the kernel")
    finally:
        conn.close()


def plan_id(client: httpx.Client, image: str) -> int:
    return next(p["id"] for p in client.get("/api/v1/plans").json()
                if p["image"]["name"] == image)


def launch_plan(client: httpx.Client, name: str, image: str,
                experiments: list[str] | None = None) -> str:
    return launch(client, name, experiments, plan=plan_id(client, image))

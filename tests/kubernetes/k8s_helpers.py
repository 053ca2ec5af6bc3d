"""Helpers shared by the Kubernetes backend tests."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from kubernetes import client
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from spawners.base import LABEL_DEPLOYMENT, BackendState, InstanceSpec, Observation
from spawners.k8s_manifests import PodOptions
from spawners.kubernetes import KubernetesBackend

if TYPE_CHECKING:
    from tests.kubernetes.conftest import K8sEnv


class Checkpoints:
    """Records what ``create`` hands to the reconciler."""

    def __init__(self) -> None:
        self.states: list[BackendState] = []

    async def __call__(self, state: BackendState) -> None:
        self.states.append(dict(state))


async def observe_until(backend: KubernetesBackend, spec: InstanceSpec, state: BackendState,
                        done: Callable[[Observation], bool], within: float = 60
                        ) -> Observation:
    deadline = time.monotonic() + within
    obs = None
    while time.monotonic() < deadline:
        obs = await backend.observe(spec.uid, state, spec.secrets, spec.protocols)
        if done(obs):
            return obs
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out; last observation {obs}")


def read(env: K8sEnv, kind: str, name: str) -> dict[str, Any] | None:
    fn = getattr(env.core, f"read_namespaced_{kind}")
    try:
        return json.loads(fn(name, env.namespace, _preload_content=False).data)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def execute(endpoint: str, base_url: str, token: str, code: str,
                  keep_kernel: bool = False) -> str:
    """Run ``code`` in a new kernel of the JupyterLab at ``endpoint``; its text/plain result.

    The kernel is shut down afterwards unless ``keep_kernel``.
    """
    headers = {"Authorization": f"token {token}"}
    http = AsyncHTTPClient()
    reply = await http.fetch(HTTPRequest(f"{endpoint}{base_url}api/kernels", method="POST",
                                         body="{}", headers=headers, request_timeout=30))
    kernel = json.loads(reply.body)["id"]
    ws_url = endpoint.replace("http://", "ws://") + f"{base_url}api/kernels/{kernel}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=headers, request_timeout=30))
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), 60)
            assert raw is not None, "websocket closed"
            msg = json.loads(raw)
            if (msg.get("parent_header", {}).get("msg_id") == msg_id
                    and msg["msg_type"] == "execute_result"):
                return str(msg["content"]["data"]["text/plain"])
    finally:
        ws.close()
        if not keep_kernel:
            await http.fetch(HTTPRequest(f"{endpoint}{base_url}api/kernels/{kernel}",
                                         method="DELETE", headers=headers),
                             raise_error=False)


def sleeper(env_pod: PodOptions) -> PodOptions:
    """Pods whose 'JupyterLab' just sleeps: cheap when only the pod matters. A shell
    command, so it runs in any image too (JupyterLab's flags become ignored ``$@``)."""
    return PodOptions(jupyter_command=("/bin/sh", "-c", "exec sleep 600"),
                      identity_provider="", extra_env=env_pod.extra_env,
                      termination_grace_s=1)


def write_pod_config(env: K8sEnv, path: Path) -> Path:
    """The ATRIUM_K8S_POD_CONFIG file that makes the portal's pods run on the harness."""
    from tests.kubernetes.conftest import pod_options

    options = pod_options(env)
    path.write_text(yaml.safe_dump({
        "jupyter_command": list(options.jupyter_command),
        "jupyter_extra_args": list(options.jupyter_extra_args),
        "desktop_command": list(options.desktop_command),
        "extra_env": dict(options.extra_env),
        "termination_grace_s": options.termination_grace_s,
    }))
    return path


def delete_deployment_objects(env: K8sEnv, deployment: str) -> None:
    """Whatever a failed test left in the cluster: one deployment's pods, secrets and
    network policies."""
    selector = f"{LABEL_DEPLOYMENT}={deployment}"
    client.NetworkingV1Api(env.api_client).delete_collection_namespaced_network_policy(
        env.namespace, label_selector=selector, _preload_content=False)
    env.core.delete_collection_namespaced_pod(env.namespace, label_selector=selector,
                                              grace_period_seconds=0, _preload_content=False)
    env.core.delete_collection_namespaced_secret(env.namespace, label_selector=selector,
                                                 _preload_content=False)

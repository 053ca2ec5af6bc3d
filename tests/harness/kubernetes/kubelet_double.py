"""A TEST DOUBLE OF THE KUBELET ONLY: runs the pods bound to one Node as local processes.

Not a container runtime and not part of Atrium. It exists so that tests against a real
API server + scheduler (see :mod:`cluster`) reach pods that really serve: a pod's
JupyterLab answers at its pod IP.

What it does, per pod the real scheduler binds to its node:

* allocates a unique loopback pod IP ``127.0.X.Y`` (all of 127.0.0.0/8 is local on Linux)
  where every declared container port is free;
* runs each container's ``command + args`` as a local process (own process group), with
  the pod's ``env``/``envFrom`` resolved like the kubelet does (``fieldRef`` such as
  ``status.podIP``, ``secretKeyRef``, ``configMapKeyRef``) and ``$(VAR)`` expanded;
* reports status: phase, ``podIP``, container states, ``Ready``/``ContainersReady``
  conditions (``readinessProbe`` ``httpGet``/``tcpSocket`` honoured, ``exec`` assumed ok);
* surfaces failures like the kubelet: a missing secret -> waiting
  ``CreateContainerConfigError``; a command that cannot start -> waiting
  ``RunContainerError``; an exit under ``restartPolicy: Always`` -> ``lastState.terminated``
  + waiting ``CrashLoopBackOff`` and a restart after an exponential back-off; under
  ``Never`` -> terminated and phase ``Failed``/``Succeeded``;
* mounts ``hostPath`` volumes: each pod gets a sandbox directory whose ``home/`` stands for
  the container's ``workingDir`` (it is the processes' cwd and ``HOME``); a hostPath volume
  mounted under it (``subPath`` honoured) is bind-mounted there in a private mount namespace
  of the container (``unshare``), remounted read-only for ``readOnly`` mounts, so writes
  fail with EROFS as in a real pod. This needs root; without it the mount point is a
  symlink to the host path and only the host's file permissions protect it. A missing
  ``type: Directory`` path keeps the container waiting (``ContainerCreating``), as on a node;
* on deletion (``deletionTimestamp``) SIGTERMs the process groups, SIGKILLs them after the
  grace period, then deletes the pod with ``grace_period_seconds=0``.

Environment: like a container's, a pod's processes see only what their spec gives them
(``env``/``envFrom``) on top of :data:`POD_BASE_ENV` (what an image's ``ENV`` and the
runtime would add: ``PATH``, ``HOSTNAME``, ``HOME`` = the sandbox's ``home/``), never the
test process' environment: a pod that works here does not lean on the tester's variables.

configMap/secret/emptyDir volumes and ServiceAccount tokens: see :mod:`pod_files`.

Deliberate differences from a kubelet: the image is ignored (an empty ``command`` means
``args`` is the whole argv), processes run as the double's own user, volumes other than
``hostPath`` are plain sandbox directories (emptyDir) or ignored (nfs, PVCs), resources are
not enforced.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.harness.kubernetes import pod_files
from tests.harness.kubernetes.podtools import (
    Conditions,
    can_bind_mount,
    expand,
    host_mounts,
    in_mount_namespace,
    kill_tree,
    prepare_mounts,
    process_tree,
    timestamp,
    watch_events,
)

Json = dict[str, Any]

# What every container starts with before its spec's env (an image's usual ENV PATH, as
# Docker's default); HOSTNAME (the pod name) and HOME (the sandbox's home/) are added.
POD_BASE_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}

class _ConfigError(Exception):
    """The container's config cannot be resolved yet (e.g. a missing secret)."""


@dataclass
class _Container:
    spec: Json
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: Json | None = None  # final state (restartPolicy Never/OnFailure success)
    last_terminated: Json | None = None
    next_start: float = 0.0
    ready: bool = False
    next_probe: float = 0.0


class _PodRunner(threading.Thread):
    """Runs one pod until told to stop; owns its processes."""

    def __init__(self, kubelet: KubeletDouble, pod: Json, ip: str) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.pod_uid: str = meta["uid"]
        self.pod = pod
        self.ip = ip
        self.sandbox = kubelet.sandbox_root / f"{self.namespace}_{self.pod_name}_{self.pod_uid[:8]}"
        (self.sandbox / "home").mkdir(parents=True, exist_ok=True)
        self.containers = [_Container(spec=c) for c in pod["spec"]["containers"]]
        self.policy: str = pod["spec"].get("restartPolicy", "Always")
        self.start_time = timestamp()
        self.conditions = Conditions()
        self._halt = threading.Event()  # not _stop: Thread.join() calls its own _stop()
        self._delete_grace: float | None = None  # set: terminate, then delete the pod
        self._grace = 2.0
        self._last_status: Json | None = None
        self.pids_started: list[int] = []

    # -------------------------------------------------------------- control

    def terminate(self, grace: float, delete: bool) -> None:
        """Stop the processes (SIGTERM, SIGKILL after ``grace``); delete the pod if asked."""
        self._delete_grace = grace if delete else None
        self._grace = grace
        self._halt.set()

    def pids(self) -> list[int]:
        """Every live process of the pod's containers, descendants included."""
        return [pid for c in self.containers if c.proc and c.proc.poll() is None
                for pid in process_tree(c.proc.pid)]

    # -------------------------------------------------------------- loop

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                now = time.monotonic()
                for c in self.containers:
                    self._step(c, now)
                self._push_status()
                self._halt.wait(0.25)
        except Exception as exc:  # a bug here must not kill the double silently
            self.kubelet.log(f"pod {self.pod_name}: runner crashed: {exc!r}")
        finally:
            self._kill_all(self._grace)
        if self._delete_grace is not None:
            self.kubelet.delete_pod(self.namespace, self.pod_name, self.pod_uid)

    def _step(self, c: _Container, now: float) -> None:
        if c.proc is not None and c.proc.poll() is not None:
            self._on_exit(c, now)
        if c.proc is None and c.terminated is None and now >= c.next_start:
            self._start(c, now)
        if c.proc is not None and now >= c.next_probe:
            probe = c.spec.get("readinessProbe")
            c.ready = self._probe(c, probe) if probe else True
            c.next_probe = now + min(float((probe or {}).get("periodSeconds", 10)), 1.0)

    def _start(self, c: _Container, now: float) -> None:
        name = c.spec["name"]
        try:
            env = self._env(c.spec)
        except _ConfigError as exc:
            c.waiting = ("CreateContainerConfigError", str(exc))
            c.next_start = now + 1.0  # the kubelet retries: the secret may appear
            return
        mounts = host_mounts(self.pod["spec"], c.spec, self.sandbox)
        problem = prepare_mounts(mounts, self.kubelet.bind_mounts)
        prelude: tuple[str, ...] = ()
        try:  # configMap/secret/emptyDir volumes and the token: see pod_files
            files = pod_files.materialise(self.pod, c.spec, self.sandbox,
                                          self.kubelet.secret_data, self.kubelet.configmap_data)
            pod_files.rewrite(env, files, {e["name"] for e in c.spec.get("env") or []})
            argv = [expand(a, env) for a in [*(c.spec.get("command") or []),
                                             *(c.spec.get("args") or [])]]
            if pod_files.wants_token(self.pod) and self.kubelet.bind_mounts:
                token_dir, api_env = pod_files.write_token(self.kubelet.core, self.pod,
                                                           self.sandbox)
                env.update(api_env)
                prelude = tuple(pod_files.token_prelude(token_dir))
        except (pod_files.VolumeMissing, ApiException) as exc:
            problem = f"MountVolume.SetUp failed: {exc}"
        if problem:
            c.waiting = ("ContainerCreating", problem)  # the kubelet retries the mount
            c.next_start = now + 1.0
            return
        log = open(self.sandbox / f"{name}.log", "ab")  # the child inherits it
        try:
            if not argv:
                raise OSError("no command: the kubelet double ignores image entrypoints")
            if (mounts or prelude) and self.kubelet.bind_mounts:
                argv = in_mount_namespace(argv, mounts, env.get("PATH", ""), prelude)
            c.proc = subprocess.Popen(argv, env=env, cwd=self.sandbox / "home",
                                      stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            c.waiting = ("RunContainerError", f"failed to start container {name!r}: {exc}")
            c.restarts += 1
            c.next_start = now + self._backoff(c)
            return
        finally:
            log.close()
        self.pids_started.append(c.proc.pid)
        self.kubelet.pids_started.append(c.proc.pid)
        c.started_at = timestamp()
        c.waiting = None
        c.ready = False
        c.next_probe = now + 0.2

    def _on_exit(self, c: _Container, now: float) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        code = 128 - code if code < 0 else code  # killed by signal N -> 128+N
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                "startedAt": c.started_at, "finishedAt": timestamp(),
                "containerID": f"double://{c.proc.pid}"}
        c.proc = None
        c.ready = False
        if self.policy == "Always" or (self.policy == "OnFailure" and code != 0):
            c.last_terminated = term
            c.restarts += 1
            delay = self._backoff(c)
            c.waiting = ("CrashLoopBackOff", f"back-off {delay:g}s restarting failed "
                         f"container={c.spec['name']} pod={self.pod_name}")
            c.next_start = now + delay
        else:
            c.terminated = term
            c.waiting = None

    def _backoff(self, c: _Container) -> float:
        return float(min(self.kubelet.backoff_base * 2 ** max(c.restarts - 1, 0), 300.0))

    def _probe(self, c: _Container, probe: Json) -> bool:
        def port_of(value: Any) -> int:
            if isinstance(value, int):
                return value
            for p in c.spec.get("ports") or []:
                if p.get("name") == value:
                    return int(p["containerPort"])
            return int(value)
        try:
            if "httpGet" in probe:
                get = probe["httpGet"]
                url = f"http://{self.ip}:{port_of(get['port'])}{get.get('path', '/')}"
                try:
                    with urllib.request.urlopen(url, timeout=1) as resp:
                        return 200 <= resp.status < 400
                except urllib.error.HTTPError as err:
                    return 200 <= err.code < 400
            if "tcpSocket" in probe:
                with socket.create_connection(
                        (self.ip, port_of(probe["tcpSocket"]["port"])), timeout=1):
                    return True
        except (OSError, ValueError):
            return False
        return True  # exec probes are not run by the double

    # -------------------------------------------------------------- env

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "status.podIP": self.ip, "status.hostIP": "127.0.0.1",
            "metadata.name": self.pod_name, "metadata.namespace": self.namespace,
            "metadata.uid": self.pod_uid, "spec.nodeName": self.kubelet.node_name,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        raise _ConfigError(f"unsupported fieldRef {path!r}")

    def _env(self, spec: Json) -> dict[str, str]:
        """The container's environment: POD_BASE_ENV, the image's own ENV (``image_env``),
        then envFrom, then env, then HOME."""
        image = str(spec.get("image", "")).rsplit("@", 1)[0]
        repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        env = {**POD_BASE_ENV, **self.kubelet.image_env.get(repository, {}),
               "HOSTNAME": self.pod_name}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self.kubelet.secret_data(self.namespace, source["secretRef"]["name"])
            else:
                data = self.kubelet.configmap_data(self.namespace,
                                                   source["configMapRef"]["name"])
            if data is None:
                raise _ConfigError(f"envFrom source {source} not found")
            env.update({prefix + k: v for k, v in data.items()})
        for item in spec.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = expand(item["value"], env)
                continue
            ref = item.get("valueFrom") or {}
            if "fieldRef" in ref:
                env[name] = self._field(ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                is_secret = "secretKeyRef" in ref
                sel = ref["secretKeyRef" if is_secret else "configMapKeyRef"]
                data = (self.kubelet.secret_data if is_secret
                        else self.kubelet.configmap_data)(self.namespace, sel["name"])
                if data is None or sel["key"] not in data:
                    if sel.get("optional"):
                        continue
                    kind = "secret" if is_secret else "configmap"
                    what = (f'{kind} "{sel["name"]}" not found' if data is None
                            else f"couldn't find key {sel['key']} in {kind} {sel['name']}")
                    raise _ConfigError(what)
                env[name] = data[sel["key"]]
            else:
                env[name] = ""  # resourceFieldRef: not modelled
        # The sandbox stands in for the container's filesystem (see the module docstring).
        env["HOME"] = str(self.sandbox / "home")
        return env

    # -------------------------------------------------------------- status

    def _container_status(self, c: _Container) -> Json:
        if c.proc is not None:
            state: Json = {"running": {"startedAt": c.started_at}}
        elif c.terminated is not None:
            state = {"terminated": c.terminated}
        else:
            reason, message = c.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status: Json = {
            "name": c.spec["name"], "image": c.spec.get("image", ""), "imageID": "",
            "ready": c.ready and c.proc is not None, "restartCount": c.restarts,
            "started": c.proc is not None, "state": state,
            "lastState": {"terminated": c.last_terminated} if c.last_terminated else {},
        }
        if c.proc is not None:
            status["containerID"] = f"double://{c.proc.pid}"
        return status

    def _push_status(self) -> None:
        statuses = [self._container_status(c) for c in self.containers]
        if all(c.terminated is not None for c in self.containers):
            failed = any(c.terminated and c.terminated["exitCode"] for c in self.containers)
            phase = "Failed" if failed else "Succeeded"
        elif any(c.proc is not None or c.restarts for c in self.containers):
            phase = "Running"
        else:
            phase = "Pending"
        all_ready = all(s["ready"] for s in statuses)
        self.conditions.set("Initialized", True)
        self.conditions.set("ContainersReady", all_ready)
        self.conditions.set("Ready", all_ready)
        status = {
            "phase": phase, "hostIP": self.kubelet.host_ip, "podIP": self.ip,
            "podIPs": [{"ip": self.ip}], "startTime": self.start_time,
            "conditions": self.conditions.render(), "containerStatuses": statuses,
        }
        if status == self._last_status:
            return
        try:
            self.kubelet.core.patch_namespaced_pod_status(
                self.pod_name, self.namespace, {"status": status}, _preload_content=False)
            self._last_status = status
        except ApiException as exc:
            if exc.status == 404:
                self._halt.set()  # the pod is gone: nothing left to report to
            else:
                self.kubelet.log(f"pod {self.pod_name}: status update failed: {exc.status}")
        except Exception as exc:  # API server unreachable (an outage): retry next round,
            # as a kubelet does; the pod's processes keep running.
            self.kubelet.log(f"pod {self.pod_name}: status update failed: {exc!r}")

    def _kill_all(self, grace: float) -> None:
        """Like a kubelet: SIGTERM the container processes, SIGKILL what is left of their
        process trees after ``grace`` (a tree snapshot taken first: orphans re-parented
        during the grace period are still found)."""
        procs = [c.proc for c in self.containers if c.proc is not None]
        trees = {proc.pid: process_tree(proc.pid) for proc in procs}
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(deadline - time.monotonic(), 0.0))
        for proc in procs:
            kill_tree({**trees[proc.pid], **process_tree(proc.pid)})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for c in self.containers:
            c.proc = None


class KubeletDouble:
    """Plays the kubelet of one Node (see the module docstring). Thread-based.

    ``start()`` registers the Node (ready, not-ready taint removed) and returns once the
    pod watch is established; ``stop()`` kills every process it started.
    """

    def __init__(self, api_client: Any, node_name: str = "atrium-node-0", *,
                 cpu: str = "8", memory: str = "32Gi", gpus: int = 0,
                 labels: dict[str, str] | None = None, sandbox_root: Path | None = None,
                 backoff_base: float = 10.0, log: Any = None,
                 image_env: dict[str, dict[str, str]] | None = None) -> None:
        # Any: raw replies (_preload_content=False) are not what the stubs promise.
        self.core: Any = client.CoreV1Api(api_client)
        self.node_name = node_name
        self.host_ip = "127.0.0.1"
        self.capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpus:
            self.capacity["nvidia.com/gpu"] = str(gpus)
        self.node_labels = {"kubernetes.io/hostname": node_name, "kubernetes.io/os": "linux",
                            "atrium.test/kubelet-double": "true", **(labels or {})}
        self._own_sandbox = sandbox_root is None
        self.sandbox_root = sandbox_root or Path(tempfile.mkdtemp(prefix="atrium-kubelet-"))
        self.backoff_base = backoff_base
        # What an image's ENV would give its containers, by repository (the double runs
        # commands on this machine instead of images).
        self.image_env = image_env or {}
        self.bind_mounts = can_bind_mount()  # see podtools.prepare_mounts otherwise
        self.log = log or (lambda msg: None)
        self.runners: dict[str, _PodRunner] = {}  # pod uid ->
        self.pids_started: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None  # the open watch response, shut down by stop()
        # A random third octet: two doubles on one machine rarely pick the same IPs.
        self._ip_counter = random.randrange(16, 200) * 256

    # -------------------------------------------------------------- node

    def register_node(self) -> None:
        """Create the Node (or reuse it), report it Ready, remove the not-ready taint."""
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": self.node_labels}}
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
        now = timestamp()
        status = {
            "capacity": self.capacity, "allocatable": self.capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletDouble",
                            "message": "test double of the kubelet",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": self.host_ip},
                          {"type": "Hostname", "address": self.node_name}],
            "nodeInfo": {"kubeletVersion": "v1.20.2-double", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "double://0",
                         "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""},
        }
        self.core.patch_node_status(self.node_name, {"status": status}, _preload_content=False)
        for _ in range(10):  # read-modify-write: retry on conflicts
            node = json.loads(self.core.read_node(self.node_name, _preload_content=False).data)
            taints = node["spec"].get("taints") or []
            kept = [t for t in taints if not t["key"].startswith("node.kubernetes.io/")]
            if kept == taints:
                return
            node["spec"]["taints"] = kept
            try:
                self.core.replace_node(self.node_name, node, _preload_content=False)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise

    # -------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30) -> None:
        self.register_node()
        self._thread = threading.Thread(target=self._watch_loop, name="kubelet-double",
                                        daemon=True)
        self._thread.start()
        if not self._synced.wait(timeout):
            raise RuntimeError("kubelet double: pod watch not established")

    def stop(self) -> None:
        """Stop watching and kill every pod's processes (pods stay in the API)."""
        self._stop.set()
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()  # unblocks the watch read at once
        with self._lock:
            runners = list(self.runners.values())
            self.runners.clear()
        for runner in runners:
            runner.terminate(grace=2.0, delete=False)
        for runner in runners:
            runner.join(10)
        if self._thread is not None:
            self._thread.join(5)
        if self._own_sandbox:
            shutil.rmtree(self.sandbox_root, ignore_errors=True)

    def processes(self) -> dict[str, list[int]]:
        """``namespace/pod`` -> pids of its running container processes."""
        with self._lock:
            return {f"{r.namespace}/{r.pod_name}": r.pids() for r in self.runners.values()}

    # -------------------------------------------------------------- API helpers

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        import base64

        try:
            obj = json.loads(self.core.read_namespaced_secret(
                name, namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _ConfigError(f"reading secret {name}: {exc.status}") from exc
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}

    def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            obj = json.loads(self.core.read_namespaced_config_map(
                name, namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _ConfigError(f"reading configmap {name}: {exc.status}") from exc
        return dict(obj.get("data") or {})

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Final delete (grace 0), only of this very pod (uid precondition)."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(name, namespace, body=body,
                                            grace_period_seconds=0, _preload_content=False)
        with self._lock:
            self.runners.pop(uid, None)

    # -------------------------------------------------------------- pods

    def _allocate_ip(self, pod: Json) -> str:
        ports = [p["containerPort"] for c in pod["spec"]["containers"]
                 for p in c.get("ports") or []]
        while True:
            self._ip_counter += 1
            third, fourth = divmod(self._ip_counter, 256)
            if fourth in (0, 255):
                continue
            ip = f"127.0.{third % 250 + 1}.{fourth}"
            if all(self._port_free(ip, port) for port in ports):
                return ip

    @staticmethod
    def _port_free(ip: str, port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind((ip, port))
            except OSError:
                return False
        return True

    def _handle(self, kind: str, pod: Json) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self._lock:
            runner = self.runners.get(uid)
        if kind == "DELETED":
            if runner is not None:
                runner.terminate(grace=0.0, delete=False)
                with self._lock:
                    self.runners.pop(uid, None)
            return
        if meta.get("deletionTimestamp"):
            grace = float(meta.get("deletionGracePeriodSeconds") or 0)
            if runner is not None:
                runner.terminate(grace=grace, delete=True)
            else:
                self.delete_pod(meta["namespace"], meta["name"], uid)
            return
        if runner is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            runner = _PodRunner(self, pod, self._allocate_ip(pod))
            with self._lock:
                self.runners[uid] = runner
            self.log(f"starting pod {meta['namespace']}/{meta['name']} at {runner.ip}")
            runner.start()

    def _opened(self, resp: Any) -> None:
        self._resp = resp
        if self._stop.is_set():  # stop() ran before the watch was open
            with contextlib.suppress(Exception):
                resp.shutdown()

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self._stop.is_set():
            try:
                listing = json.loads(self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False).data)
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self._handle("ADDED", pod)
                with self._lock:
                    vanished = [r for uid, r in self.runners.items() if uid not in seen]
                for runner in vanished:
                    self._handle("DELETED", runner.pod)
                version = listing["metadata"]["resourceVersion"]
                self._synced.set()
                while not self._stop.is_set():
                    for event in watch_events(
                            self.core.list_pod_for_all_namespaces,
                            on_open=self._opened,
                            field_selector=selector,
                            resource_version=version, allow_watch_bookmarks=True,
                            timeout_seconds=10, _request_timeout=(5, 20)):
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise ApiException(status=obj.get("code", 500),
                                               reason=obj.get("message", ""))
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._handle(event["type"], obj)
                        if self._stop.is_set():
                            break
            except Exception as exc:  # 410 Gone, a restarting API server...: re-list
                if not self._stop.is_set():
                    self.log(f"kubelet double watch: {exc!r}; re-listing")
                    self._stop.wait(0.5)

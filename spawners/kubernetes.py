"""The Kubernetes backend: each instance is one pod (+ its Secret, optionally a Service).

Manifests come from the pure builders in :mod:`spawners.k8s_manifests`; this module only
talks to the API server, through the synchronous ``kubernetes`` client run in a
:class:`~spawners.base.BlockingPool` (never on the event loop).

Status comes from ONE watch per backend (namespace + deployment label selector) run by a
daemon thread: list, then watch from the list's ``resourceVersion``; re-list on 410 Gone,
on errors (with back-off) and every ``relist_interval_s``. Pods are cached in memory by
instance uid, so :meth:`KubernetesBackend.observe` normally makes no API call; it falls back
to one GET when the watch is not synced or the pod is not in the cache (to confirm GONE).

Create order: NetworkPolicy (unless ``network.policy`` is off: the pod is never reachable
but from the portal), Secret, Pod, ``checkpoint`` (pod name/uid), then the Secret and the
policy are made owned by the pod (so the garbage collector deletes them with the pod), then
the optional Service. Every step tolerates 409 (already exists), so ``create`` may be
retried after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from spawners.base import (
    Backend,
    BackendError,
    BackendState,
    BlockingPool,
    CapacityError,
    Checkpoint,
    InstanceSpec,
    Observation,
    ResourceState,
)
from spawners.k8s_manifests import (
    Manifest,
    PodOptions,
    classify_pod,
    deployment_selector,
    endpoints,
    instance_uid,
    make_pod,
    make_pod_network_policy,
    make_secret,
    make_service,
    object_name,
    pod_protocols,
    running_protocols,
    secret_owner_patch,
)
from spawners.probe import jupyter_ready, rfb_ready

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KubernetesSettings:
    """Where and how the backend runs pods.

    ``kubeconfig`` None: in-cluster config when running in a pod, else the default
    kubeconfig (``$KUBECONFIG`` / ``~/.kube/config``). ``use_service``: address sessions
    through a per-instance Service's DNS name instead of the pod IP (for portals that
    cannot route to pod IPs but resolve cluster DNS). ``unschedulable_grace_s``: how long
    an unschedulable pod stays PENDING before it is FAILED (raise it with an autoscaler).
    ``leftover_grace_s``: age after which a secret without pod is reported by
    :meth:`KubernetesBackend.list_managed` (younger ones may belong to a create in progress).
    """

    namespace: str = "atrium"
    kubeconfig: str | None = None
    context: str | None = None
    pod: PodOptions = field(default_factory=PodOptions)
    use_service: bool = False
    unschedulable_grace_s: float = 0.0
    delete_timeout_s: float = 120.0
    probe_timeout_s: float = 2.0
    watch_timeout_s: int = 30
    relist_interval_s: float = 300.0
    leftover_grace_s: float = 60.0
    max_workers: int = 8


def _api_message(exc: ApiException) -> str:
    """The API server's own message of an error (its JSON Status), else the HTTP reason."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = json.loads(exc.body or "")
        if body.get("message"):
            return str(body["message"])
    return f"{exc.status} {exc.reason}"


def _error(action: str, exc: Exception) -> BackendError:
    """A user-facing error for a failed API call (quota/capacity errors distinguished)."""
    if isinstance(exc, ApiException):
        message = _api_message(exc)
        if exc.status == 403 and "exceeded quota" in message:
            return CapacityError(f"kubernetes: {action}: {message}")
        return BackendError(f"kubernetes: {action}: {message}")
    return BackendError(f"kubernetes: {action}: API server unreachable ({exc})")


def _rv(obj: Manifest) -> int:
    """resourceVersion as a number (etcd revisions are), -1 when not numeric."""
    value = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(value) if value.isdigit() else -1


class PodWatcher:
    """The shared pod cache of one namespace + deployment, fed by one list/watch thread.

    Thread-safe. ``synced`` is true while the cache reflects a successful list and a live
    watch; readers must fall back to a GET when it is false.
    """

    def __init__(self, core: Any, namespace: str, selector: str, watch_timeout_s: int,
                 relist_interval_s: float) -> None:
        self._core = core
        self._namespace = namespace
        self._selector = selector
        self._watch_timeout_s = watch_timeout_s
        self._relist_interval_s = relist_interval_s
        self._pods: dict[str, Manifest] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread = threading.Thread(target=self._run, name=f"k8s-watch-{namespace}",
                                        daemon=True)
        self.relists = 0  # how many lists were made (tests check watch health)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def start(self) -> None:
        self._thread.start()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._synced.clear()
        resp = self._resp
        if resp is not None:
            # Unblock the read in progress; the thread exits at once.
            with contextlib.suppress(Exception):
                resp.shutdown()
        self._thread.join(2)

    def get(self, uid: str) -> tuple[bool, Manifest | None]:
        """(synced, cached pod of instance ``uid`` or None)."""
        with self._lock:
            return self._synced.is_set(), self._pods.get(uid)

    def put(self, pod: Manifest) -> None:
        """Record a pod read by the caller, unless the cache already holds a newer one."""
        uid = instance_uid(pod)
        with self._lock:
            old = self._pods.get(uid)
            if old is None or _rv(pod) >= _rv(old) or _rv(pod) < 0:
                self._pods[uid] = pod

    def _apply(self, kind: str, pod: Manifest) -> None:
        uid = instance_uid(pod)
        if not uid:
            return
        with self._lock:
            old = self._pods.get(uid)
            if kind == "DELETED":
                # Only the deleted pod itself: a re-created pod of the same uid stays.
                if old is not None and old["metadata"].get("uid") == pod["metadata"].get("uid"):
                    del self._pods[uid]
            elif old is None or _rv(pod) >= _rv(old) or _rv(pod) < 0:
                self._pods[uid] = pod

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                backoff = 0.5
            except Exception as exc:  # 410 Gone, API server down, ...: re-list
                self._synced.clear()
                if self._stop.is_set():
                    return
                log.info("kubernetes watch of %s: %r; re-listing in %.1f s",
                         self._namespace, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _list_and_watch(self) -> None:
        listing = json.loads(self._core.list_namespaced_pod(
            self._namespace, label_selector=self._selector, _preload_content=False,
            _request_timeout=(5, 30)).data)
        self.relists += 1
        pods = {instance_uid(p): p for p in listing.get("items") or [] if instance_uid(p)}
        with self._lock:
            self._pods = pods
        version = listing["metadata"]["resourceVersion"]
        self._synced.set()
        relist_at = time.monotonic() + self._relist_interval_s
        while not self._stop.is_set() and time.monotonic() < relist_at:
            resp = self._core.list_namespaced_pod(
                self._namespace, label_selector=self._selector, watch=True,
                resource_version=version, allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout_s, _preload_content=False,
                _request_timeout=(5, self._watch_timeout_s + 15))
            self._resp = resp
            try:
                if self._stop.is_set():  # stop() ran before the watch was open
                    return
                for event in _events(resp):
                    obj = event["object"]
                    if event["type"] == "ERROR":  # 410 Gone: our version is too old
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    version = obj["metadata"].get("resourceVersion") or version
                    if event["type"] != "BOOKMARK":
                        self._apply(event["type"], obj)
            finally:
                self._resp = None
                resp.release_conn()


def _events(resp: Any) -> Any:
    """Watch events (JSON dicts) from a streaming response, one per line."""
    buf = b""
    for chunk in resp.stream(65536, decode_content=True):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


class KubernetesBackend(Backend):
    """Instances as pods in one namespace (see the module docstring)."""

    name = "kubernetes"

    def __init__(self, deployment_id: str, settings: KubernetesSettings | None = None,
                 api_client: Any = None) -> None:
        super().__init__(deployment_id)
        # Fail at startup, not at the first call: the id goes into every label selector.
        self._selector = deployment_selector(deployment_id)
        self.settings = settings or KubernetesSettings()
        self._api_client = api_client
        self._pool = BlockingPool(self.settings.max_workers, name="atrium-k8s")
        self._core: Any = None
        self._networking: Any = None
        self._watcher: PodWatcher | None = None
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> Any:
        if self._api_client is None:
            configuration = client.Configuration()
            if self.settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(config_file=self.settings.kubeconfig,
                                        context=self.settings.context,
                                        client_configuration=configuration)
            # Room for the pool's threads plus the watch: no "pool is full" churn.
            configuration.connection_pool_maxsize = self.settings.max_workers + 2
            self._api_client = client.ApiClient(configuration)
        return self._api_client

    @property
    def watcher(self) -> PodWatcher:
        """The shared watch, started on first use (no threads before the backend is used)."""
        with self._start_lock:
            if self._watcher is None:
                self._core = client.CoreV1Api(self._client())
                self._watcher = PodWatcher(
                    self._core, self.settings.namespace, self._selector,
                    self.settings.watch_timeout_s, self.settings.relist_interval_s)
                self._watcher.start()
            return self._watcher

    @property
    def core(self) -> Any:
        self.watcher  # noqa: B018 - creates the client and starts the watch
        return self._core

    @property
    def networking(self) -> Any:
        if self._networking is None:
            self._networking = client.NetworkingV1Api(self._client())
        return self._networking

    async def _ensure_started(self) -> None:
        """Load the client configuration and start the watch, off the event loop (kubeconfig
        auth plugins may run commands); a bad configuration is a BackendError."""
        if self._watcher is not None:
            return
        try:
            await self._pool.run(lambda: self.watcher)
        except Exception as exc:
            raise BackendError(f"kubernetes: cannot load the client configuration: {exc}"
                               ) from exc

    async def _call(self, action: str, fn: Callable[..., Any], *args: Any,
                    ok: tuple[int, ...] = (), **kwargs: Any) -> Manifest | None:
        """Run one API call in the pool; JSON reply, None for a status listed in ``ok``."""
        def call() -> Manifest:
            resp = fn(*args, _preload_content=False, _request_timeout=(5, 30), **kwargs)
            data = resp.data
            return json.loads(data) if data else {}
        try:
            return await self._pool.run(call)
        except ApiException as exc:
            if exc.status in ok:
                return None
            raise _error(action, exc) from exc
        except (HTTPError, OSError) as exc:
            raise _error(action, exc) from exc

    def _ns(self, state: BackendState) -> str:
        return str(state.get("namespace") or self.settings.namespace)

    # ------------------------------------------------------------------ lifecycle

    async def create(self, spec: InstanceSpec, checkpoint: Checkpoint) -> BackendState:
        """Create (or adopt) the instance's Secret, Pod and optional Service.

        Returns once the API server accepted them; a pod of the same name still
        terminating is waited for first. A pod of the same name belonging to another
        instance is a BackendError (never adopted).
        """
        await self._ensure_started()
        ns = self.settings.namespace
        try:
            pod_body = make_pod(spec, self.deployment_id, ns, self.settings.pod)
            secret_body = make_secret(spec, self.deployment_id, ns)
            policy_body = make_pod_network_policy(spec, self.deployment_id, ns,
                                                  self.settings.pod)
        except ValueError as exc:
            raise BackendError(f"kubernetes: invalid instance: {exc}") from exc
        name = pod_body["metadata"]["name"]
        core = self.core
        policy = self.settings.pod.network.policy
        if policy:
            await self._apply_policy(ns, name, policy_body)
        # A pod of this instance still terminating goes first: the secret it owns is then
        # garbage-collected, and must not be mistaken for this launch's.
        live = await self._settled_pod(ns, name, spec.uid)
        if policy and live is None:
            # The terminating pod owned the policy an earlier attempt made: the garbage
            # collector may have removed it with that pod. Make sure it is (still) there.
            await self._apply_policy(ns, name, policy_body)
        created = await self._call("create secret", core.create_namespaced_secret, ns,
                                   secret_body, ok=(409,))
        if created is None:
            await self._reuse_secret(ns, name, secret_body, live)
        pod = live or await self._create_pod(ns, name, pod_body, spec.uid)
        self.watcher.put(pod)
        state: BackendState = {"namespace": ns, "pod": name, "secret": name,
                               "pod_uid": pod["metadata"]["uid"]}
        await checkpoint(dict(state))
        await self._call("own secret", core.patch_namespaced_secret, name, ns,
                         secret_owner_patch(pod), _content_type="application/merge-patch+json")
        if policy:
            await self._call("own network policy",
                             self.networking.patch_namespaced_network_policy, name, ns,
                             secret_owner_patch(pod),
                             _content_type="application/merge-patch+json")
            state["network_policy"] = name
        if self.settings.use_service:
            await self._call("create service", core.create_namespaced_service, ns,
                             make_service(spec, self.deployment_id, ns), ok=(409,))
            state["service"] = name
        return state

    async def _apply_policy(self, ns: str, name: str, body: Manifest) -> None:
        """Create the instance's NetworkPolicy, or bring one left by an earlier attempt
        (or an older configuration) to ``body``'s spec."""
        api = self.networking
        created = await self._call("create network policy",
                                   api.create_namespaced_network_policy, ns, body, ok=(409,))
        if created is None:
            # Its owner (a pod of an earlier attempt) may be going: disown it, so the
            # garbage collector leaves it; the new pod owns it once created.
            await self._call("update network policy", api.patch_namespaced_network_policy,
                             name, ns, {"metadata": {"ownerReferences": None},
                                        "spec": body["spec"]},
                             _content_type="application/merge-patch+json")

    async def _settled_pod(self, ns: str, name: str, uid: str) -> Manifest | None:
        """The live pod of instance ``uid`` under ``name`` (None if there is none), after
        waiting out one that is terminating; another instance's pod is a BackendError."""
        deadline = time.monotonic() + self.settings.delete_timeout_s
        while True:
            pod = await self._call("read pod", self.core.read_namespaced_pod, name, ns,
                                   ok=(404,))
            if pod is None:
                return None
            if instance_uid(pod) != uid:
                raise BackendError(f"kubernetes: pod {ns}/{name} exists and belongs to "
                                   f"instance {instance_uid(pod)!r}")
            if not pod["metadata"].get("deletionTimestamp"):
                return pod
            if time.monotonic() > deadline:
                raise BackendError(f"kubernetes: pod {ns}/{name} is still terminating")
            await asyncio.sleep(0.5)

    async def _reuse_secret(self, ns: str, name: str, body: Manifest,
                            live: Manifest | None) -> None:
        """The secret exists: left by an earlier attempt (no owner, or owned by the live pod
        being adopted), make its data current; owned by a pod that is gone, replace it (the
        garbage collector would delete it under the new pod)."""
        core = self.core
        existing = await self._call("read secret", core.read_namespaced_secret, name, ns,
                                    ok=(404,))
        owners = {ref.get("uid") for ref in
                  ((existing or {}).get("metadata") or {}).get("ownerReferences") or []}
        if existing is not None and (not owners or (
                live is not None and live["metadata"]["uid"] in owners)):
            await self._call("update secret", core.patch_namespaced_secret, name, ns,
                             {"stringData": body["stringData"]})
            return
        if existing is not None:
            await self._call("delete stale secret", core.delete_namespaced_secret, name, ns,
                             ok=(404, 409), body={"preconditions": {
                                 "uid": existing["metadata"]["uid"]}})
        await self._call("create secret", core.create_namespaced_secret, ns, body, ok=(409,))

    async def _create_pod(self, ns: str, name: str, body: Manifest, uid: str) -> Manifest:
        deadline = time.monotonic() + self.settings.delete_timeout_s
        while True:
            pod = await self._call("create pod", self.core.create_namespaced_pod, ns, body,
                                   ok=(409,))
            if pod is not None:
                return pod
            existing = await self._call("read pod", self.core.read_namespaced_pod, name, ns,
                                        ok=(404,))
            if existing is None:
                continue  # deleted in between: create again
            if instance_uid(existing) != uid:
                raise BackendError(f"kubernetes: pod {ns}/{name} exists and belongs to "
                                   f"instance {instance_uid(existing)!r}")
            if not existing["metadata"].get("deletionTimestamp"):
                return existing  # idempotent create: adopt it
            if time.monotonic() > deadline:
                raise BackendError(f"kubernetes: pod {ns}/{name} is still terminating")
            await asyncio.sleep(0.5)

    async def delete(self, uid: str, state: BackendState) -> None:
        """Delete pod, secret and service of ``uid``; return once the pod is gone.

        The pod keeps its own termination grace period (the session may save state).
        Raises BackendError when it is still there after ``delete_timeout_s``.
        """
        await self._ensure_started()
        ns = self._ns(state)
        name = str(state.get("pod") or object_name(uid))
        core = self.core
        await self._call("delete pod", core.delete_namespaced_pod, name, ns, ok=(404,),
                         propagation_policy="Background")
        await self._call("delete secret", core.delete_namespaced_secret, name, ns, ok=(404,))
        # Always try the service: the setting may have changed since create.
        await self._call("delete service", core.delete_namespaced_service, name, ns,
                         ok=(404,))
        await self._wait_gone(uid, ns, name)
        # Last: the pod is gone, so it is never reachable without its policy.
        await self._call("delete network policy",
                         self.networking.delete_namespaced_network_policy, name, ns, ok=(404,))

    async def _wait_gone(self, uid: str, ns: str, name: str) -> None:
        deadline = time.monotonic() + self.settings.delete_timeout_s
        while time.monotonic() < deadline:
            synced, cached = self.watcher.get(uid)
            if not (synced and cached is not None):
                # The cache says gone (or cannot say): confirm with the API server.
                pod = await self._call("read pod", self.core.read_namespaced_pod, name, ns,
                                       ok=(404,))
                if pod is None or instance_uid(pod) != uid:
                    return
                await asyncio.sleep(0.5)
            else:
                await asyncio.sleep(0.1)
        raise BackendError(f"kubernetes: pod {ns}/{name} still exists after "
                           f"{self.settings.delete_timeout_s:.0f} s")

    async def stop(self, uid: str, state: BackendState) -> BackendState:
        """Pods cannot pause: stopping deletes the pod and its secret.

        The home volume (when configured) keeps the user's files; ``start`` creates a new
        pod from the spec.
        """
        await self.delete(uid, state)
        return {"namespace": self._ns(state), "stopped": True}

    async def start(self, spec: InstanceSpec, state: BackendState,
                    checkpoint: Checkpoint) -> BackendState:
        return await self.create(spec, checkpoint)

    async def reboot(self, spec: InstanceSpec, state: BackendState,
                     checkpoint: Checkpoint) -> BackendState:
        await self.delete(spec.uid, state)
        return await self.create(spec, checkpoint)

    # ------------------------------------------------------------------ observation

    def _observation(self, pod: Manifest, protocols: tuple[str, ...],
                     state: BackendState) -> Observation:
        view = classify_pod(pod, unschedulable_grace_s=self.settings.unschedulable_grace_s)
        meta = pod["metadata"]
        host = ""
        if self.settings.use_service:
            host = f"{meta['name']}.{meta.get('namespace', self.settings.namespace)}.svc"
        eps = endpoints(view.pod_ip, protocols, host) if view.pod_ip else {}
        facts: BackendState = {
            **state, "namespace": meta.get("namespace"), "pod": meta["name"],
            "pod_uid": meta.get("uid"), "node": (pod.get("spec") or {}).get("nodeName", ""),
            "pod_ip": view.pod_ip,
        }
        facts.pop("stopped", None)
        if view.state is ResourceState.FAILED and view.reason.startswith("Unschedulable"):
            facts["capacity_error"] = True  # the reconciler releases the pending pod
        else:
            facts.pop("capacity_error", None)
        return Observation(state=view.state, endpoints=eps, reason=view.reason,
                           backend_state=facts, processes=running_protocols(pod))

    async def observe(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                      protocols: tuple[str, ...]) -> Observation:
        """State from the watch cache (a GET only when the cache cannot answer), endpoints
        by pod IP (or Service): ``http://`` for JupyterLab, ``vnc://`` for the desktop, and
        protocol probes when the pod runs (JupyterLab's status API with the token; the
        desktop's RFB greeting).

        A stopped instance without pod is STOPPED, any other without pod GONE. While the
        API server is unreachable the last state seen is reported (pods keep running and
        stay reachable without it; the probes still tell the truth); the watch re-lists
        when it returns. Raises BackendError only when nothing is cached and the GET fails.
        """
        await self._ensure_started()
        synced, pod = self.watcher.get(uid)
        if pod is None:
            name = str(state.get("pod") or object_name(uid))
            pod = await self._call("read pod", self.core.read_namespaced_pod, name,
                                   self._ns(state), ok=(404,))
            if pod is not None and instance_uid(pod) != uid:
                pod = None
            if pod is not None and synced:
                self.watcher.put(pod)  # the watch is lagging: help it
        if pod is None:
            gone = ResourceState.STOPPED if state.get("stopped") else ResourceState.GONE
            return Observation(state=gone, backend_state=dict(state))
        obs = self._observation(pod, protocols, state)
        if obs.state is not ResourceState.RUNNING:
            return obs
        ready: set[str] = set()
        timeout = self.settings.probe_timeout_s
        jupyter = obs.endpoints.get("jupyter")
        token = secrets.get("jupyter_token", "")
        # Same prefix as InstanceSpec.base_url (the pod's JupyterLab serves under it).
        if jupyter and token and await jupyter_ready(jupyter, f"/instances/{uid}/lab/",
                                                     token, timeout):
            ready.add("jupyter")
        desktop = urlsplit(obs.endpoints.get("desktop", ""))
        if desktop.hostname and desktop.port and await rfb_ready(
                desktop.hostname, desktop.port, timeout):
            ready.add("desktop")
        return replace(obs, ready=frozenset(ready))

    async def list_managed(self) -> dict[str, Observation]:
        """Every instance of this deployment with resources: uid -> observation.

        Three list calls with this deployment's label selector, run together: pods,
        secrets and network policies (a crash between creating an instance's policy or
        secret and its pod leaves them alone; they are reported GONE once older than
        ``leftover_grace_s``, so reconcile deletes them when no live instance claims them,
        without racing a create in progress).
        """
        await self._ensure_started()
        ns = self.settings.namespace
        pods, secrets, policies = await asyncio.gather(
            self._call("list pods", self.core.list_namespaced_pod, ns,
                       label_selector=self._selector),
            self._call("list secrets", self.core.list_namespaced_secret, ns,
                       label_selector=self._selector),
            self._call("list network policies",
                       self.networking.list_namespaced_network_policy, ns,
                       label_selector=self._selector))
        found: dict[str, Observation] = {}
        for pod in (pods or {}).get("items") or []:
            uid = instance_uid(pod)
            if uid:
                found[uid] = self._observation(pod, pod_protocols(pod), {})
        now = datetime.now(UTC)
        leftovers = [("secret", s) for s in (secrets or {}).get("items") or []]
        leftovers += [("network policy", p) for p in (policies or {}).get("items") or []]
        for kind, obj in leftovers:
            uid = instance_uid(obj)
            meta = obj["metadata"]
            created = datetime.fromisoformat(
                str(meta.get("creationTimestamp") or now.isoformat()).replace("Z", "+00:00"))
            if uid and uid not in found and (
                    (now - created).total_seconds() >= self.settings.leftover_grace_s):
                found[uid] = Observation(
                    state=ResourceState.GONE, reason=f"only the instance's {kind} is left",
                    backend_state={"namespace": ns, "pod": meta["name"]})
        return found

    async def close(self) -> None:
        if self._watcher is not None:
            watcher, self._watcher = self._watcher, None
            await asyncio.get_running_loop().run_in_executor(None, watcher.stop)
        self._pool.shutdown()
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()

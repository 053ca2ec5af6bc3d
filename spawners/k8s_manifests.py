"""Pure builders and readers of the Kubernetes objects behind one Atrium instance.

No I/O here: every function takes plain data and returns JSON-ready dicts in the API's own
camelCase form (what ``kubectl get -o json`` shows), so manifests are testable without a
cluster and :mod:`spawners.kubernetes` only moves them over the wire.

One instance is:

* a Pod ``atrium-<uid>`` running JupyterLab (container ``lab``) and, when asked for, a
  desktop (container ``desktop``: ``images/desktop/start-desktop.sh``, TigerVNC's Xvnc
  serving RFB with VNC authentication on the pod IP, plus the desktop session);
* a Secret ``atrium-<uid>`` holding the instance secrets (``jupyter_token``,
  ``vnc_password``), read by the containers through ``secretKeyRef`` env vars and owned by
  the pod once the pod exists (see :func:`secret_owner_patch`), so the garbage collector
  removes it with the pod;
* a NetworkPolicy ``atrium-<uid>`` admitting the portal alone (see
  :mod:`spawners.k8s_network`), created before the pod and owned by it;
* optionally a Service ``atrium-<uid>`` selecting the pod.

All of them carry the labels ``atrium/instance`` and ``atrium/deployment``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from spawners.base import LABEL_DEPLOYMENT, LABEL_INSTANCE, InstanceSpec, ResourceState
from spawners.k8s_network import NetworkOptions, make_network_policy
from spawners.templating import format_placeholders

Manifest = dict[str, Any]
"""A Kubernetes object (or part of one) as JSON-ready data."""

JUPYTER_PORT = 8888
DESKTOP_PORT = 6080  # RFB (VNC), spoken by the portal's bridge (web/desktop.py)
# Where images/desktop/Dockerfile installs images/desktop/start-desktop.sh.
DESKTOP_SCRIPT = "/usr/local/bin/start-desktop.sh"
IDENTITY_PROVIDER = "images.jupyter_identity.AtriumIdentityProvider"
ANNOTATION_NAME = "atrium/name"
ANNOTATION_OWNER = "atrium/owner"
ANNOTATION_LABELS = "atrium/labels"
SECRET_KEYS = ("jupyter_token", "vnc_password")
CONTAINER_PROTOCOLS = {"lab": "jupyter", "desktop": "desktop"}  # container name -> protocol

# Container "waiting" reasons that will not resolve by waiting: the instance is FAILED.
FAILED_WAITING_REASONS = frozenset({
    "CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "InvalidImageName",
    "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError",
    "RunContainerError", "StartError",
})

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_LABEL_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class VolumeTemplate:
    """How a facility path becomes a pod volume (configured by the admin).

    * ``hostPath``: the node's own ``path`` (the facility storage is mounted on every node);
    * ``nfs``: ``server``:``path`` mounted directly by the kubelet;
    * ``pvc``: ``claim``, mounted with ``subPath`` = the path relative to ``root`` (the
      facility path at which the claim's volume is rooted).

    ``path`` is the facility path itself (``DataMount.source`` for data); it must lie under
    ``root`` for ``pvc``.
    """

    kind: Literal["hostPath", "nfs", "pvc"] = "hostPath"
    server: str = ""
    claim: str = ""
    root: str = "/"


@dataclass(frozen=True)
class Placement:
    """Where a flavour's pods may run: node selector and tolerations (API form)."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Manifest] = ()


@dataclass(frozen=True)
class PodOptions:
    """Admin-configured shape of session pods (everything not in the InstanceSpec).

    ``jupyter_command`` is the argv prefix that starts JupyterLab in the pod image;
    ``desktop_command`` the one of the desktop start script (with the interface of
    ``images/desktop/start-desktop.sh``: it gets ``--listen=$(POD_IP):6080`` and the
    ``VNC_PASSWORD`` env var), empty when the pod image has no desktop. ``home_path``
    (``{username}`` substituted) is the home and JupyterLab root, data mounts land at
    ``home_path/<DataMount.target>`` as on the other backends. ``home_volume`` makes the
    home persistent (its ``{username}`` substituted facility path is ``home_source``);
    without it the home is an ``emptyDir``.
    """

    jupyter_command: tuple[str, ...] = ("jupyter", "lab")
    jupyter_extra_args: tuple[str, ...] = ()
    identity_provider: str = IDENTITY_PROVIDER  # "" -> JupyterLab's own token (JUPYTER_TOKEN)
    desktop_command: tuple[str, ...] = (DESKTOP_SCRIPT,)  # empty: no desktop protocol
    home_path: str = "/home/{username}"
    home_volume: VolumeTemplate | None = None
    home_source: str = "/home/{username}"
    data_volume: VolumeTemplate = field(default_factory=VolumeTemplate)
    placements: Mapping[str, Placement] = field(default_factory=dict)  # flavour_ref ->
    extra_env: Mapping[str, str] = field(default_factory=dict)
    image_pull_policy: str = "IfNotPresent"
    termination_grace_s: int = 10
    service_account: str = ""  # "" -> no token mounted at all
    network: NetworkOptions = field(default_factory=NetworkOptions)


# --------------------------------------------------------------------------- names


def check_label_value(value: str, what: str) -> str:
    """Return ``value`` if it is a valid label value (<= 63 chars, alnum/-_.); else ValueError."""
    if not value or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"{what} {value!r} is not a valid Kubernetes label value")
    return value


def object_name(uid: str) -> str:
    """The DNS-1123 name shared by the pod, secret and service of instance ``uid``.

    Deterministic (idempotent create relies on it); long or odd uids are shortened with a
    hash so two uids never share a name.
    """
    clean = _DNS_LABEL_BAD.sub("-", uid.lower()).strip("-")
    name = f"atrium-{clean}"
    if clean != uid or len(name) > 63:
        digest = hashlib.sha256(uid.encode()).hexdigest()[:10]
        name = f"atrium-{clean[:40]}".rstrip("-") + f"-{digest}"
    return name


def labels(uid: str, deployment_id: str) -> dict[str, str]:
    return {
        LABEL_INSTANCE: check_label_value(uid, "instance uid"),
        LABEL_DEPLOYMENT: check_label_value(deployment_id, "deployment id"),
    }


def deployment_selector(deployment_id: str) -> str:
    """Label selector of every object of one Atrium deployment."""
    return f"{LABEL_DEPLOYMENT}={check_label_value(deployment_id, 'deployment id')}"


def _metadata(spec: InstanceSpec, deployment_id: str, namespace: str) -> Manifest:
    return {
        "name": object_name(spec.uid),
        "namespace": namespace,
        "labels": labels(spec.uid, deployment_id),
        "annotations": {
            ANNOTATION_NAME: spec.name,
            ANNOTATION_OWNER: spec.owner.username,
            # Free-form labels go in one annotation: their keys/values need not be valid
            # Kubernetes label syntax.
            ANNOTATION_LABELS: json.dumps(dict(spec.labels), sort_keys=True),
        },
    }


# --------------------------------------------------------------------------- secret


def make_secret(spec: InstanceSpec, deployment_id: str, namespace: str) -> Manifest:
    """The instance's Secret: every key of ``spec.secrets`` (at least the known keys)."""
    data = {key: "" for key in SECRET_KEYS}
    data.update(spec.secrets)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(spec, deployment_id, namespace),
        "type": "Opaque",
        "stringData": data,
    }


def secret_owner_patch(pod: Manifest) -> Manifest:
    """Merge patch making the secret (or the NetworkPolicy) owned by ``pod`` (a created
    pod: it has a uid), so the garbage collector removes it with the pod."""
    meta = pod["metadata"]
    return {"metadata": {"ownerReferences": [{
        "apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
        "blockOwnerDeletion": False, "controller": False,
    }]}}


# --------------------------------------------------------------------------- pod


def resources(spec: InstanceSpec) -> Manifest:
    """Requests equal to limits (Guaranteed QoS): a session gets what its flavour promises."""
    res = spec.resources
    amounts: dict[str, str] = {
        "cpu": f"{round(res.cpus * 1000)}m",
        "memory": f"{res.memory_mb}Mi",
    }
    if res.gpus:
        amounts["nvidia.com/gpu"] = str(res.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _volume_source(template: VolumeTemplate, path: str, read_only: bool) -> tuple[Manifest, str]:
    """(volume source, subPath) of facility ``path`` through ``template``."""
    if template.kind == "hostPath":
        return {"hostPath": {"path": path, "type": "Directory"}}, ""
    if template.kind == "nfs":
        if not template.server:
            raise ValueError("nfs volume template needs a server")
        return {"nfs": {"server": template.server, "path": path, "readOnly": read_only}}, ""
    if template.kind == "pvc":
        if not template.claim:
            raise ValueError("pvc volume template needs a claim")
        root = posixpath.normpath(template.root)
        norm = posixpath.normpath(path)
        rel = posixpath.relpath(norm, root)
        if rel == ".." or rel.startswith("../"):
            raise ValueError(f"{path!r} is not under the claim's root {template.root!r}")
        return ({"persistentVolumeClaim": {"claimName": template.claim, "readOnly": read_only}},
                "" if rel == "." else rel)
    raise ValueError(f"unknown volume template kind {template.kind!r}")


def _home(pattern: str, spec: InstanceSpec) -> str:
    """An admin path pattern with ``{username}`` filled (nothing else: no attribute access)."""
    return format_placeholders(pattern, {"username": spec.owner.username}, "home pattern")


def volumes(spec: InstanceSpec, options: PodOptions) -> tuple[list[Manifest], list[Manifest]]:
    """(pod volumes, volume mounts): the home and every data mount, data always readOnly.

    Data mounts sit at ``home/<target>``; ``target`` may not escape the home.
    """
    home = _home(options.home_path, spec)
    vols: list[Manifest] = []
    mounts: list[Manifest] = []
    if options.home_volume is None:
        vols.append({"name": "home", "emptyDir": {}})
        mounts.append({"name": "home", "mountPath": home})
    else:
        source, sub = _volume_source(
            options.home_volume, _home(options.home_source, spec),
            read_only=False)
        vols.append({"name": "home", **source})
        mounts.append({"name": "home", "mountPath": home, **({"subPath": sub} if sub else {})})
    claim_volumes: dict[str, str] = {}  # one volume per claim, many subPath mounts
    for index, mount in enumerate(spec.mounts):
        target = posixpath.normpath(mount.target)
        if target.startswith(("/", "..")) or target == ".":
            raise ValueError(f"data mount target {mount.target!r} must be inside the home")
        source, sub = _volume_source(options.data_volume, mount.source, read_only=True)
        if "persistentVolumeClaim" in source:
            claim = source["persistentVolumeClaim"]["claimName"]
            name = claim_volumes.get(claim)
            if name is None:
                name = claim_volumes[claim] = f"data-{index}"
                vols.append({"name": name, **source})
        else:
            name = f"data-{index}"
            vols.append({"name": name, **source})
        # Data is read-only whatever DataMount.read_only says: mounts are never writable.
        entry: Manifest = {"name": name, "mountPath": posixpath.join(home, target),
                           "readOnly": True}
        if sub:
            entry["subPath"] = sub
        mounts.append(entry)
    return vols, mounts


def _secret_env(env_name: str, secret: str, key: str) -> Manifest:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def jupyter_args(spec: InstanceSpec, options: PodOptions) -> list[str]:
    """JupyterLab's argv. ``$(POD_IP)`` is expanded by the kubelet from the env var."""
    args = [
        *options.jupyter_command,
        "--no-browser", "--ip=$(POD_IP)", f"--port={JUPYTER_PORT}", "--port-retries=0",
        f"--ServerApp.base_url={spec.base_url}",
        # The proxy reaches the pod under its own Host name: JupyterLab must not reject it.
        "--ServerApp.allow_remote_access=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if options.identity_provider:
        args.append(f"--ServerApp.identity_provider_class={options.identity_provider}")
    args.extend(options.jupyter_extra_args)
    return args


def desktop_args(options: PodOptions) -> list[str]:
    """The desktop container's argv: the start script, serving RFB on the pod IP.

    The VNC password comes from the environment (``VNC_PASSWORD``), never the argv.
    """
    return [*options.desktop_command, f"--listen=$(POD_IP):{DESKTOP_PORT}"]


def _security_context() -> Manifest:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def make_pod(spec: InstanceSpec, deployment_id: str, namespace: str,
             options: PodOptions) -> Manifest:
    """The session pod of ``spec``: image ``spec.image_ref``, one container per protocol.

    Raises ValueError on what no cluster could run (bad uid, unsupported protocol, data
    mount outside the home).
    """
    unknown = set(spec.protocols) - {"jupyter", "desktop"}
    if unknown:
        raise ValueError(f"unsupported protocols {sorted(unknown)}")
    if "desktop" in spec.protocols and not options.desktop_command:
        raise ValueError("desktop sessions need PodOptions.desktop_command")
    if not spec.protocols:
        raise ValueError("an instance needs at least one protocol")
    name = object_name(spec.uid)
    home = _home(options.home_path, spec)
    vols, mounts = volumes(spec, options)
    base_env: list[Manifest] = [
        # Downward API: the pod IP is only known once the pod is scheduled.
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": home},
        {"name": "USER", "value": spec.owner.username},
        {"name": "ATRIUM_INSTANCE", "value": spec.uid},
        *({"name": k, "value": v} for k, v in sorted(options.extra_env.items())),
    ]
    containers: list[Manifest] = []
    if "jupyter" in spec.protocols:
        token_env = "ATRIUM_SESSION_TOKEN" if options.identity_provider else "JUPYTER_TOKEN"
        containers.append({
            "name": "lab",
            "image": spec.image_ref,
            "imagePullPolicy": options.image_pull_policy,
            "args": jupyter_args(spec, options),
            "workingDir": home,
            "env": [*base_env, _secret_env(token_env, name, "jupyter_token")],
            "ports": [{"name": "jupyter", "containerPort": JUPYTER_PORT, "protocol": "TCP"}],
            # /api answers without auth: a cheap liveness-of-the-server check.
            "readinessProbe": {
                "httpGet": {"path": f"{spec.base_url}api", "port": JUPYTER_PORT},
                "periodSeconds": 2, "failureThreshold": 3,
            },
            "resources": resources(spec),
            "volumeMounts": mounts,
            "securityContext": _security_context(),
        })
    if "desktop" in spec.protocols:
        containers.append({
            "name": "desktop",
            "image": spec.image_ref,
            "imagePullPolicy": options.image_pull_policy,
            "args": desktop_args(options),
            "workingDir": home,
            "env": [*base_env, _secret_env("VNC_PASSWORD", name, "vnc_password")],
            "ports": [{"name": "desktop", "containerPort": DESKTOP_PORT, "protocol": "TCP"}],
            # Xvnc accepts connections once it serves (a Service must wait for that).
            "readinessProbe": {"tcpSocket": {"port": DESKTOP_PORT},
                               "periodSeconds": 2, "failureThreshold": 3},
            # The flavour's resources are the pod's: only the first container claims them.
            "resources": {} if containers else resources(spec),
            "volumeMounts": mounts,
            "securityContext": _security_context(),
        })
    placement = options.placements.get(spec.flavour_ref, Placement())
    pod_security: Manifest = {
        "runAsUser": spec.owner.uid, "runAsGroup": spec.owner.gid, "fsGroup": spec.owner.gid,
    }
    if spec.owner.uid != 0:
        pod_security["runAsNonRoot"] = True
    pod_spec: Manifest = {
        "containers": containers,
        "volumes": vols,
        "securityContext": pod_security,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": options.termination_grace_s,
        "automountServiceAccountToken": bool(options.service_account),
        "enableServiceLinks": False,
    }
    if options.service_account:
        pod_spec["serviceAccountName"] = options.service_account
    if placement.node_selector:
        pod_spec["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in placement.tolerations]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(spec, deployment_id, namespace),
        "spec": pod_spec,
    }


def make_pod_network_policy(spec: InstanceSpec, deployment_id: str, namespace: str,
                            options: PodOptions) -> Manifest:
    """The instance's NetworkPolicy (:mod:`spawners.k8s_network`): ingress from the portal
    on the session ports only; egress DNS + what ``options.network`` opens."""
    return make_network_policy(
        spec, _metadata(spec, deployment_id, namespace), labels(spec.uid, deployment_id),
        options.network, {"jupyter": JUPYTER_PORT, "desktop": DESKTOP_PORT})


def make_service(spec: InstanceSpec, deployment_id: str, namespace: str) -> Manifest:
    """A ClusterIP Service selecting the instance's pod, one port per protocol."""
    ports = []
    if "jupyter" in spec.protocols:
        ports.append({"name": "jupyter", "port": JUPYTER_PORT, "targetPort": JUPYTER_PORT})
    if "desktop" in spec.protocols:
        ports.append({"name": "desktop", "port": DESKTOP_PORT, "targetPort": DESKTOP_PORT})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec, deployment_id, namespace),
        "spec": {"type": "ClusterIP", "selector": labels(spec.uid, deployment_id),
                 "ports": ports},
    }


# --------------------------------------------------------------------------- reading pods


@dataclass(frozen=True)
class PodView:
    """What Atrium reads from one pod: state, reason, address."""

    state: ResourceState
    reason: str = ""
    pod_ip: str = ""


def instance_uid(obj: Manifest) -> str:
    """The ``atrium/instance`` label of an object ("" when absent)."""
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_INSTANCE, ""))


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _container_failure(status: Manifest) -> str:
    """Why a container is failed for good ("" when it is not)."""
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in FAILED_WAITING_REASONS:
        text = f"container {status.get('name')}: {waiting['reason']}"
        if waiting.get("message"):
            text += f": {waiting['message']}"
        last = (status.get("lastState") or {}).get("terminated") or {}
        if last:
            text += (f" (last exit code {last.get('exitCode')}"
                     f"{', ' + last['reason'] if last.get('reason') else ''})")
        return text
    return ""


def classify_pod(pod: Manifest, now: datetime | None = None,
                 unschedulable_grace_s: float = 0.0) -> PodView:
    """Map a pod (API JSON) to Atrium's view of it.

    FAILED: phase Failed/Succeeded (a session never ends by itself), a container stuck in a
    reason that waiting will not fix (crash loop, image pull, bad config), or the scheduler
    saying Unschedulable for longer than ``unschedulable_grace_s`` (0: at once; raise it
    where a cluster autoscaler may add nodes). RUNNING: phase Running with every container
    running. Otherwise PENDING, with the most telling reason known.
    """
    now = now or datetime.now(UTC)
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    pod_ip = status.get("podIP") or ""
    phase = status.get("phase") or "Pending"
    if meta.get("deletionTimestamp"):
        return PodView(ResourceState.PENDING, "pod is terminating", pod_ip)
    statuses = [*(status.get("initContainerStatuses") or []),
                *(status.get("containerStatuses") or [])]
    if phase in ("Failed", "Succeeded"):
        reason = status.get("message") or status.get("reason") or ""
        for cs in statuses:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term and not reason:
                reason = (f"container {cs.get('name')} exited with code {term.get('exitCode')}"
                          f"{': ' + term['reason'] if term.get('reason') else ''}")
        return PodView(ResourceState.FAILED, reason or f"pod {phase.lower()}", pod_ip)
    for cs in statuses:
        failure = _container_failure(cs)
        if failure:
            return PodView(ResourceState.FAILED, failure, pod_ip)
    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            since = _parse_time(cond.get("lastTransitionTime")) or now
            text = f"Unschedulable: {cond.get('message') or 'no node fits the pod'}"
            if (now - since).total_seconds() >= unschedulable_grace_s:
                return PodView(ResourceState.FAILED, text, pod_ip)
            return PodView(ResourceState.PENDING, text, pod_ip)
    containers = (pod.get("spec") or {}).get("containers") or []
    running = [cs for cs in status.get("containerStatuses") or []
               if (cs.get("state") or {}).get("running") is not None]
    if phase == "Running" and pod_ip and len(running) >= len(containers):
        return PodView(ResourceState.RUNNING, "", pod_ip)
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return PodView(ResourceState.PENDING, f"container {cs.get('name')}: "
                           f"{waiting['reason']}", pod_ip)
    if not (pod.get("spec") or {}).get("nodeName"):
        return PodView(ResourceState.PENDING, "waiting for the scheduler", pod_ip)
    return PodView(ResourceState.PENDING, status.get("reason") or phase, pod_ip)


def running_protocols(pod: Manifest) -> frozenset[str]:
    """Protocols whose container is running now (from the container statuses, no probe)."""
    return frozenset(
        CONTAINER_PROTOCOLS[cs["name"]]
        for cs in (pod.get("status") or {}).get("containerStatuses") or []
        if cs.get("name") in CONTAINER_PROTOCOLS
        and (cs.get("state") or {}).get("running") is not None)


def pod_protocols(pod: Manifest) -> tuple[str, ...]:
    """The protocols a pod serves, from its containers' named ports."""
    names = {port.get("name") for c in (pod.get("spec") or {}).get("containers") or []
             for port in c.get("ports") or []}
    return tuple(p for p in ("jupyter", "desktop") if p in names)


def endpoints(pod_ip: str, protocols: Sequence[str], host: str = "") -> dict[str, str]:
    """protocol -> URL of the session, by pod IP (or ``host``, e.g. a Service name):
    ``http://`` for JupyterLab, ``vnc://`` for the desktop (raw RFB, as on the local
    backend: the portal's bridge connects to it unchanged)."""
    address = host or pod_ip
    if not address:
        return {}
    urls = {"jupyter": f"http://{address}:{JUPYTER_PORT}",
            "desktop": f"vnc://{address}:{DESKTOP_PORT}"}
    return {p: urls[p] for p in protocols if p in urls}

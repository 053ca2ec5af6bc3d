"""Files of the kubelet double's pods: configMap, secret and emptyDir volumes, and the
ServiceAccount token of pods that ask for one (in-cluster configuration).

The double runs containers as local processes, which see the host's filesystem, not an
image's. So a volume is written into the pod's sandbox (at :func:`podtools.sandbox_path` of
its mount path), and every environment value naming a path under a mount path is rewritten
to the sandbox path: ``ATRIUM_K8S_POD_CONFIG=/etc/atrium/pod-config.yaml`` reaches the
process as ``<sandbox>/rootfs/etc/atrium/pod-config.yaml``; ``$(VAR)`` in the command then
expands to the rewritten value. (Paths written literally in a command are not rewritten.)

The ServiceAccount token is the exception: Kubernetes clients read it from the fixed path
``/var/run/secrets/kubernetes.io/serviceaccount``, so for a pod with
``automountServiceAccountToken: true`` (explicitly: the double has no admission plugin to
decide) the double requests a token (TokenRequest API) for the pod's ServiceAccount, writes
token, ``ca.crt`` and namespace into the sandbox, and the container runs in a private mount
namespace where a tmpfs over ``/run`` carries them at that path (root only); it also gets
``KUBERNETES_SERVICE_HOST``/``_PORT`` of the API server, as a pod does.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.harness.kubernetes.podtools import sandbox_path

Json = dict[str, Any]
SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
DataReader = Callable[[str, str], "dict[str, str] | None"]


class VolumeMissing(Exception):
    """A configMap or secret a volume needs does not exist (yet): the container waits."""


def _files(volume: Json, namespace: str, secrets: DataReader, configmaps: DataReader
           ) -> dict[str, str] | None:
    """path in the volume -> content, for configMap and secret volumes; None for others."""
    if "configMap" in volume or "secret" in volume:
        is_secret = "secret" in volume
        source = volume["secret" if is_secret else "configMap"]
        name = source["secretName" if is_secret else "name"]
        data = (secrets if is_secret else configmaps)(namespace, name)
        if data is None:
            if source.get("optional"):
                return {}
            raise VolumeMissing(f'{"secret" if is_secret else "configmap"} "{name}" not found')
        items = source.get("items")
        if not items:
            return dict(data)
        return {item["path"]: data[item["key"]] for item in items if item["key"] in data}
    return None


def materialise(pod: Json, container: Json, sandbox: Path, secrets: DataReader,
                configmaps: DataReader) -> dict[str, Path]:
    """Write the container's configMap/secret/emptyDir mounts into the sandbox; return
    mount path -> sandbox path (hostPath volumes are the double's own business)."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    namespace = pod["metadata"]["namespace"]
    out: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"]) or {}
        if "hostPath" in volume:
            continue
        target = sandbox_path(mount["mountPath"], container.get("workingDir") or "", sandbox)
        files = _files(volume, namespace, secrets, configmaps)
        if files is None and "emptyDir" not in volume:
            continue
        if files is not None and target.exists():
            shutil.rmtree(target)  # a restart sees the current data, as after a re-sync
        target.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or {}).items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        out[posixpath.normpath(mount["mountPath"])] = target
    return out


def rewrite(env: dict[str, str], mounts: dict[str, Path], names: set[str]) -> None:
    """Point the values of ``names`` that lie under a mount path at the sandbox."""
    for name in names:
        value = env.get(name, "")
        for mount_path, target in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                env[name] = str(target) + value[len(mount_path.rstrip("/")):]
                break


def wants_token(pod: Json) -> bool:
    return pod["spec"].get("automountServiceAccountToken") is True


def write_token(core: Any, pod: Json, sandbox: Path) -> tuple[Path, dict[str, str]]:
    """Request a token for the pod's ServiceAccount; write the serviceaccount directory.
    Returns it and the environment a pod gets (KUBERNETES_SERVICE_HOST/PORT)."""
    namespace = pod["metadata"]["namespace"]
    account = pod["spec"].get("serviceAccountName") or "default"
    reply = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}, _preload_content=False)
    token = json.loads(reply.data)["status"]["token"]
    configuration = core.api_client.configuration
    directory = sandbox / "serviceaccount"
    directory.mkdir(exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "namespace").write_text(namespace)
    ca = configuration.ssl_ca_cert
    if ca:
        shutil.copyfile(ca, directory / "ca.crt")
    url = urlsplit(configuration.host)
    return directory, {"KUBERNETES_SERVICE_HOST": url.hostname or "127.0.0.1",
                       "KUBERNETES_SERVICE_PORT": str(url.port or 443)}


def token_prelude(directory: Path) -> list[str]:
    """Shell lines (in the container's mount namespace) putting ``directory`` at SA_PATH."""
    run = "/run"  # /var/run is a symlink to it on Debian
    target = shlex.quote(SA_PATH.replace("/var/run", run, 1))
    return [f"mount -t tmpfs tmpfs {run}", f"mkdir -p {target}",
            f"mount --bind {shlex.quote(str(directory))} {target}"]

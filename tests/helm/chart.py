"""Helpers of the chart tests: the chart, its CI values files, rendering to objects, and the
restricted Pod Security Standard checked on pod specs (pure functions apart from helm)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "atrium"
Json = dict[str, Any]


def ci_values(name: str) -> Json:
    """helm/atrium/ci/<name>-values.yaml (minimal: the three required values)."""
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()) or {}


def merged(base: Json, override: Json) -> Json:
    """``base`` with ``override`` merged in (maps deep, everything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(helm: Any, values: Json, namespace: str = "atrium", name: str = "atrium"
           ) -> dict[str, str]:
    """Template path -> rendered text (``helm template``)."""
    with helm.Chart.load(str(CHART)) as chart:
        return dict(chart.render(values, name=name, namespace=namespace))


def objects(rendered: dict[str, str]) -> list[Json]:
    """Every Kubernetes object of a rendering (NOTES.txt left out)."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".txt"):
            continue
        out.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return out


def manifest_objects(text: str) -> list[Json]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objs: list[Json], kind: str, name: str | None = None) -> list[Json]:
    return [o for o in objs if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]


def pod_specs(objs: list[Json]) -> list[tuple[str, Json]]:
    """(kind/name, pod spec) of every workload."""
    out = []
    for o in objs:
        if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            out.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
    return out


_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(spec: Json) -> list[str]:
    """What in a pod spec breaks the *restricted* Pod Security Standard (Kubernetes docs,
    "Pod Security Standards", restricted profile); [] when it passes."""
    problems = []
    pod = spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)} not allowed")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems

"""The shape of session pods, from the admin's YAML file (``ATRIUM_K8S_POD_CONFIG``).

Everything about pods that is not in the catalogue: how the pod image starts JupyterLab and
the desktop, where homes and experiment data come from, where each flavour's pods may run.
Every key is optional; absent keys take :class:`~spawners.k8s_manifests.PodOptions`'
defaults (which match the images built from ``images/``)::

    jupyter_command: [jupyter, lab]          # argv prefix starting JupyterLab in the image
    jupyter_extra_args: []                   # appended to JupyterLab's argv
    identity_provider: images.jupyter_identity.AtriumIdentityProvider  # "": JupyterLab's token
    desktop_command: [/usr/local/bin/start-desktop.sh]                 # []: no desktops
    home_path: /home/{username}              # the home and JupyterLab root in the pod
    home_volume: {kind: nfs, server: nfs.example.org}  # absent: an emptyDir home
    home_source: /home/{username}            # the home's facility path (with home_volume)
    data_volume: {kind: hostPath}            # or {kind: nfs, server: ...}
                                             # or {kind: pvc, claim: data, root: /data}
    placements:                              # flavour's kubernetes ref -> where it runs
      large-gpu:
        node_selector: {gpu: a100}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
    extra_env: {TZ: Europe/Berlin}           # more environment for every container
    image_pull_policy: IfNotPresent
    termination_grace_s: 10
    service_account: ""                      # "": no API token mounted in session pods
    network:                                 # the NetworkPolicy of each session:
      portal_pods: {app.kubernetes.io/component: portal}  # see spawners/k8s_network.py
      egress_cidrs: [10.20.0.0/16]

:func:`load_pod_options` raises ValueError naming the offending key; the backend registry
turns it into a settings error naming ``ATRIUM_K8S_POD_CONFIG``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from spawners.k8s_manifests import Placement, PodOptions, VolumeTemplate
from spawners.k8s_network import network_options_from_mapping
from spawners.templating import format_placeholders

_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_VOLUME_KEYS = ("kind", "server", "claim", "root")


def _argv(data: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key}: expected a list of non-empty strings, not {value!r}")
    return tuple(value)


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key}: expected text, not {value!r}")
    return value


def _strings(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in value.items()):
        raise ValueError(f"{key}: expected a mapping of names to values, not {value!r}")
    return {k: str(v) for k, v in value.items()}


def _volume(value: Any, key: str) -> VolumeTemplate:
    if not isinstance(value, dict) or set(value) - set(_VOLUME_KEYS):
        raise ValueError(f"{key}: expected a mapping with keys among {', '.join(_VOLUME_KEYS)}")
    template = VolumeTemplate(**{k: str(v) for k, v in value.items()})  # type: ignore[arg-type]
    if template.kind not in ("hostPath", "nfs", "pvc"):
        raise ValueError(f"{key}.kind: expected hostPath, nfs or pvc, not {template.kind!r}")
    if template.kind == "nfs" and not template.server:
        raise ValueError(f"{key}: an nfs volume needs a server")
    if template.kind == "pvc" and not template.claim:
        raise ValueError(f"{key}: a pvc volume needs a claim")
    return template


def _placements(value: Any) -> dict[str, Placement]:
    if not isinstance(value, dict):
        raise ValueError(f"placements: expected a mapping of flavour refs, not {value!r}")
    out = {}
    for flavour, item in value.items():
        key = f"placements.{flavour}"
        if not isinstance(item, dict) or set(item) - {"node_selector", "tolerations"}:
            raise ValueError(f"{key}: expected node_selector and/or tolerations")
        tolerations = item.get("tolerations") or []
        if not isinstance(tolerations, list) or not all(isinstance(t, dict)
                                                        for t in tolerations):
            raise ValueError(f"{key}.tolerations: expected a list of tolerations")
        out[str(flavour)] = Placement(
            _strings(item.get("node_selector") or {}, f"{key}.node_selector"),
            tuple(tolerations))
    return out


def pod_options_from_mapping(data: Mapping[str, Any]) -> PodOptions:
    """PodOptions from parsed YAML (see the module docstring); ValueError names the key."""
    known = set(PodOptions.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)} (expected among "
                         f"{', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key in ("jupyter_command", "jupyter_extra_args", "desktop_command"):
        argv = _argv(data, key)
        if argv is not None:
            values[key] = argv
    if values.get("jupyter_command") == ():
        raise ValueError("jupyter_command: must not be empty")
    for key in ("identity_provider", "home_path", "home_source", "service_account"):
        text = _text(data, key)
        if text is not None:
            values[key] = text
    for key in ("home_path", "home_source"):
        if key in values and not values[key].startswith("/"):
            raise ValueError(f"{key}: expected an absolute path, not {values[key]!r}")
        if key in values:
            format_placeholders(values[key], {"username": "x"}, key)
    if data.get("home_volume") is not None:
        values["home_volume"] = _volume(data["home_volume"], "home_volume")
    if data.get("data_volume") is not None:
        values["data_volume"] = _volume(data["data_volume"], "data_volume")
    if data.get("placements") is not None:
        values["placements"] = _placements(data["placements"])
    if data.get("network") is not None:
        values["network"] = network_options_from_mapping(data["network"])
    if data.get("extra_env") is not None:
        values["extra_env"] = _strings(data["extra_env"], "extra_env")
    policy = _text(data, "image_pull_policy")
    if policy is not None:
        if policy not in _PULL_POLICIES:
            raise ValueError(f"image_pull_policy: expected one of {', '.join(_PULL_POLICIES)}")
        values["image_pull_policy"] = policy
    grace = data.get("termination_grace_s")
    if grace is not None:
        if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
            raise ValueError(f"termination_grace_s: expected seconds (>= 0), not {grace!r}")
        values["termination_grace_s"] = grace
    return PodOptions(**values)


def load_pod_options(path: Path) -> PodOptions:
    """Read and validate the pod configuration file at ``path``."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read it: {err}") from err
    if not isinstance(data, dict):
        raise ValueError("expected a mapping of settings at the top level")
    return pod_options_from_mapping(data)

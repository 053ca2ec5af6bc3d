"""The site's VM boot settings for the OpenStack backend: a YAML file (ATRIUM_OS_BOOT_CONFIG).

Today it holds how experiment data is mounted in VMs, one :class:`MountTemplate` per kind
of data source (see spawners/cloudinit.py)::

    mount_templates:
      default: {device: "nfs.example.org:/exports{path}", fstype: nfs4,
                options: "noatime,_netdev"}
      cephfs: {device: "10.0.0.1:/volumes{path}", fstype: ceph, options: name=atrium}

``device`` is a ``str.format`` pattern over ``{path}``, ``{source}`` and ``{name}``. A
source ``kind:/path`` uses template ``kind``, anything else ``default`` (which is NFS 4 of
the source as written when the file does not set it). :func:`parse_boot_config` is pure;
a bad file raises :class:`ValueError` naming what is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from spawners.cloudinit import BootSettings, MountTemplate

_KEYS = {"mount_templates"}
_TEMPLATE_KEYS = {"device", "fstype", "options"}
_WORD = re.compile(r"^\S+$")


def _template(kind: str, raw: Any) -> MountTemplate:
    if not isinstance(raw, dict) or set(raw) - _TEMPLATE_KEYS or "device" not in raw:
        raise ValueError(f"mount_templates.{kind}: expected a mapping with device and "
                         f"optionally fstype, options")
    values = {key: str(value) for key, value in raw.items()}
    try:
        values["device"].format(path="/p", source="s", name="n")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"mount_templates.{kind}.device: bad pattern ({err}); "
                         "use {path}, {source} or {name}") from None
    for key in ("fstype", "options"):
        if key in values and not _WORD.match(values[key]):
            raise ValueError(f"mount_templates.{kind}.{key}: must be one word")
    return MountTemplate(**values)


def parse_boot_config(text: str) -> BootSettings:
    """The BootSettings a config document describes (defaults for what it omits)."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML: {err}") from None
    if not isinstance(doc, dict) or set(doc) - _KEYS:
        raise ValueError(f"expected a mapping with keys {sorted(_KEYS)}")
    raw = doc.get("mount_templates") or {}
    if not isinstance(raw, dict):
        raise ValueError("mount_templates: expected a mapping kind -> template")
    templates = {str(kind): _template(str(kind), value) for kind, value in raw.items()}
    templates.setdefault("default", MountTemplate())
    return BootSettings(mount_templates=templates)


def load_boot_config(path: Path) -> BootSettings:
    return parse_boot_config(path.read_text())

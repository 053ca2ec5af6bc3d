"""The VM boot settings file (ATRIUM_OS_BOOT_CONFIG) and how the registry uses it: no cloud
needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.settings import SettingsError, load_settings
from spawners import openstack_boot_config
from spawners.cloudinit import MountTemplate
from spawners.openstack import OpenStackBackend
from spawners.openstack_boot_config import load_boot_config, parse_boot_config
from spawners.registry import make_backends


def test_the_documented_example_is_valid() -> None:
    doc = openstack_boot_config.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\n\n", 1)[0]
    boot = parse_boot_config(block)
    assert boot.mount_templates["default"] == MountTemplate(
        "nfs.example.org:/exports{path}", "nfs4", "noatime,_netdev")
    assert boot.mount_templates["cephfs"] == MountTemplate(
        "10.0.0.1:/volumes{path}", "ceph", "name=atrium")


def test_an_empty_file_keeps_the_nfs_default() -> None:
    assert parse_boot_config("").mount_templates == {"default": MountTemplate()}
    only_ceph = parse_boot_config("mount_templates: {ceph: {device: 'm:/v{path}'}}")
    assert set(only_ceph.mount_templates) == {"ceph", "default"}


@pytest.mark.parametrize(("text", "key"), [
    ("- a list\n", "mapping"),
    ("mount_templates: [1]\n", "mount_templates"),
    ("mount_templates: {x: {fstype: nfs}}\n", "mount_templates.x"),
    ("mount_templates: {x: {device: d, owner: root}}\n", "mount_templates.x"),
    ("mount_templates: {x: {device: '{secret}'}}\n", "mount_templates.x.device"),
    ("mount_templates: {x: {device: '{0}'}}\n", "mount_templates.x.device"),
    ("mount_templates: {x: {device: d, options: 'ro, exec'}}\n", "mount_templates.x.options"),
    ("mount_templates: {x: {device: d, fstype: ''}}\n", "mount_templates.x.fstype"),
    ("unknown: 1\n", "mount_templates"),
    ("mount_templates: {x: [unclosed\n", "YAML"),
])
def test_mistakes_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        parse_boot_config(text)


def settings_with(tmp_path: Path, **env: str) -> Any:
    return load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_BACKENDS": "openstack",
                          "ATRIUM_OS_CLOUD": "somewhere", "ATRIUM_DEPLOYMENT_ID": "boot-cfg",
                          **env})


async def test_registry_builds_the_backend_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "boot.yaml"
    path.write_text(yaml.safe_dump({"mount_templates": {
        "default": {"device": "/srv{source}", "fstype": "none", "options": "bind"}}}))
    assert load_boot_config(path).mount_templates["default"].fstype == "none"
    backend = make_backends(settings_with(tmp_path, ATRIUM_OS_BOOT_CONFIG=str(path)))["openstack"]
    assert isinstance(backend, OpenStackBackend)
    try:
        assert backend.boot.mount_templates["default"] == MountTemplate("/srv{source}", "none",
                                                                        "bind")
        assert backend.boot.deployment_id == "boot-cfg"
    finally:
        await backend.close()


def test_bad_boot_config_is_a_settings_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"ATRIUM_OS_BOOT_CONFIG.*no such file"):
        settings_with(tmp_path, ATRIUM_OS_BOOT_CONFIG=str(tmp_path / "missing.yaml"))
    path = tmp_path / "boot.yaml"
    path.write_text("mount_templates: {default: {device: '{nope}'}}\n")
    with pytest.raises(SettingsError, match=r"ATRIUM_OS_BOOT_CONFIG.*device"):
        make_backends(settings_with(tmp_path, ATRIUM_OS_BOOT_CONFIG=str(path)))

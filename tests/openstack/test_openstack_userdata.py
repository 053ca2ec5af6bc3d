"""Unit tests of the cloud-init user-data builder (spawners/cloudinit.py): no cloud needed."""

from __future__ import annotations

import shlex

import pytest
import yaml

from spawners.base import DataMount, InstanceSpec, Owner
from spawners.cloudinit import (
    BootSettings,
    BootTemplateError,
    MountTemplate,
    render_user_data,
)

SETTINGS = BootSettings(
    deployment_id="dep-1",
    mount_templates={
        "default": MountTemplate("nfs.example.org:/exports{path}", "nfs4", "rw,noatime"),
        "cephfs": MountTemplate("mon1,mon2:/volumes{path}", "ceph", "name=atrium"),
    })


def spec(**overrides: object) -> InstanceSpec:
    values: dict[str, object] = {
        "uid": "i-0001", "name": "Beamtime analysis", "image_ref": "atrium-tiny",
        "flavour_ref": "atrium.small", "protocols": ("jupyter",),
        "owner": Owner("alice", uid=2001, gid=3001, email="alice@example.org"),
        "mounts": (DataMount("20261234", "/data/2026/20261234", "data/20261234"),
                   DataMount("20269999", "cephfs:/proposals/20269999", "data/20269999")),
        "secrets": {"jupyter_token": "tok-alice-0001", "vnc_password": "vnc-alice",
                    "portal_api_key": "never-in-user-data"},
    }
    values.update(overrides)
    return InstanceSpec(**values)  # type: ignore[arg-type]


def files(doc: dict) -> dict[str, str]:
    return {f["path"]: f["content"] for f in doc["write_files"]}


def test_valid_cloud_config() -> None:
    text = render_user_data(spec(), SETTINGS)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    assert doc["runcmd"] == [["/usr/local/sbin/atrium-boot"]]
    assert doc["atrium"]["instance"] == "i-0001"
    assert doc["atrium"]["deployment"] == "dep-1"


def test_owner_account_created() -> None:
    doc = yaml.safe_load(render_user_data(spec(), SETTINGS))
    boot = files(doc)["/usr/local/sbin/atrium-boot"]
    assert "groupadd -g 3001" in boot
    assert "useradd -m -d /home/alice -u 2001 -g 3001" in boot
    unit = files(doc)["/etc/systemd/system/atrium-jupyter.service"]
    assert "User=alice" in unit and "WorkingDirectory=/home/alice" in unit
    assert doc["atrium"]["owner"] == "alice"


def test_mounts_exactly_the_chosen_experiments_read_only() -> None:
    doc = yaml.safe_load(render_user_data(spec(), SETTINGS))
    entries = [line.split() for line in files(doc)["/etc/atrium/fstab"].splitlines()
               if line and not line.startswith("#")]
    assert [(e[0], e[1], e[2]) for e in entries] == [
        ("nfs.example.org:/exports/data/2026/20261234", "/home/alice/data/20261234", "nfs4"),
        ("mon1,mon2:/volumes/proposals/20269999", "/home/alice/data/20269999", "ceph"),
    ]
    for entry in entries:
        options = entry[3].split(",")
        assert "ro" in options and "rw" not in options  # even if the template says rw
    assert [m["read_only"] for m in doc["atrium"]["mounts"]] == [True, True]


def test_no_mounts() -> None:
    doc = yaml.safe_load(render_user_data(spec(mounts=()), SETTINGS))
    assert doc["atrium"]["mounts"] == []
    assert not [line for line in files(doc)["/etc/atrium/fstab"].splitlines()
                if line and not line.startswith("#")]


def test_only_this_instances_secrets() -> None:
    mine = render_user_data(spec(), SETTINGS)
    other = render_user_data(spec(uid="i-0002", owner=Owner("bob"),
                                  secrets={"jupyter_token": "tok-bob-0002"}), SETTINGS)
    assert "tok-alice-0001" in mine and "tok-bob-0002" not in mine
    assert "tok-alice-0001" not in other
    # secrets of protocols the instance does not run, and unrelated ones, stay out
    assert "vnc-alice" not in mine and "never-in-user-data" not in mine
    env = files(yaml.safe_load(mine))["/etc/atrium/session.env"]
    parsed = dict(line.split("=", 1) for line in env.splitlines())
    assert shlex.split(parsed["ATRIUM_SESSION_TOKEN"]) == ["tok-alice-0001"]
    # the token is read from the environment: never on a command line
    argv = yaml.safe_load(mine)["atrium"]["services"]["jupyter"]["argv"]
    assert not any("tok-alice" in a for a in argv)


def test_jupyter_served_under_the_instance_base_url() -> None:
    doc = yaml.safe_load(render_user_data(spec(), SETTINGS))
    jupyter = doc["atrium"]["services"]["jupyter"]
    assert jupyter["port"] == 8888
    assert "--ServerApp.base_url=/instances/i-0001/lab/" in jupyter["argv"]
    assert any("AtriumIdentityProvider" in a for a in jupyter["argv"])


def test_desktop_gets_only_its_password() -> None:
    text = render_user_data(spec(protocols=("desktop",)), SETTINGS)
    assert "vnc-alice" in text and "tok-alice-0001" not in text
    assert set(yaml.safe_load(text)["atrium"]["services"]) == {"desktop"}


@pytest.mark.parametrize("bad", [
    {"owner": Owner("alice; rm -rf /")},
    {"mounts": (DataMount("x", "/d", "../../etc"),)},
    {"mounts": (DataMount("x", "/d", "/etc/x"),)},
    {"mounts": (DataMount("x", "/d with space", "data/x"),)},
    {"secrets": {}},
    {"secrets": {"jupyter_token": "a\nb"}},
])
def test_unsafe_specs_are_refused(bad: dict) -> None:
    with pytest.raises(BootTemplateError):
        render_user_data(spec(**bad), SETTINGS)


def test_image_boot_template_inline_and_invalid_output() -> None:
    inline = "#cloud-config\nruncmd:\n  - [echo, {{ owner.username | tojson }}]\n"
    doc = yaml.safe_load(render_user_data(spec(boot_template=inline), SETTINGS))
    assert doc == {"runcmd": [["echo", "alice"]]}
    with pytest.raises(BootTemplateError):
        render_user_data(spec(boot_template="#!/bin/sh\necho {{ instance.uid }}\n"))
    with pytest.raises(BootTemplateError):
        render_user_data(spec(boot_template="no-such-template.yaml.j2"))

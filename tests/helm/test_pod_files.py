"""The kubelet double's volume files (tests/harness/kubernetes/pod_files.py): what the
install tests rely on to give the portal pods their configuration, as plain functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.kubernetes import pod_files

POD = {"metadata": {"namespace": "ns"}, "spec": {"volumes": [
    {"name": "config", "configMap": {"name": "cm"}},
    {"name": "clouds", "secret": {"secretName": "s", "items": [{"key": "y", "path": "c.yaml"}]}},
    {"name": "state", "emptyDir": {}},
    {"name": "data", "hostPath": {"path": "/srv"}},
    {"name": "maybe", "configMap": {"name": "absent", "optional": True}},
]}}
CONTAINER = {"name": "c", "volumeMounts": [
    {"name": "config", "mountPath": "/etc/atrium"},
    {"name": "clouds", "mountPath": "/etc/openstack"},
    {"name": "state", "mountPath": "/var/lib/atrium"},
    {"name": "data", "mountPath": "/data"},
    {"name": "maybe", "mountPath": "/opt/maybe"},
]}


def reader(store: dict[str, dict[str, str]]) -> pod_files.DataReader:
    return lambda namespace, name: store.get(f"{namespace}/{name}")


def test_volumes_are_written_and_env_paths_point_at_them(tmp_path: Path) -> None:
    secrets = reader({"ns/s": {"y": "clouds: {}", "other": "no"}})
    configmaps = reader({"ns/cm": {"pod-config.yaml": "a: 1", "experiments.yaml": "e"}})
    mounts = pod_files.materialise(POD, CONTAINER, tmp_path, secrets, configmaps)
    assert set(mounts) == {"/etc/atrium", "/etc/openstack", "/var/lib/atrium", "/opt/maybe"}
    root = tmp_path / "rootfs"
    assert (root / "etc/atrium/pod-config.yaml").read_text() == "a: 1"
    assert sorted(p.name for p in (root / "etc/openstack").iterdir()) == ["c.yaml"]
    assert (root / "var/lib/atrium").is_dir() and not (root / "data").exists()
    env = {"CONFIG": "/etc/atrium/pod-config.yaml", "STATE": "/var/lib/atrium",
           "ELSEWHERE": "/etc/atriumx/file", "UNTOUCHED": "/etc/atrium/a"}
    pod_files.rewrite(env, mounts, {"CONFIG", "STATE", "ELSEWHERE"})
    assert env == {"CONFIG": str(root / "etc/atrium/pod-config.yaml"),
                   "STATE": str(root / "var/lib/atrium"), "ELSEWHERE": "/etc/atriumx/file",
                   "UNTOUCHED": "/etc/atrium/a"}


def test_a_missing_source_keeps_the_container_waiting(tmp_path: Path) -> None:
    with pytest.raises(pod_files.VolumeMissing, match='configmap "cm" not found'):
        pod_files.materialise(POD, CONTAINER, tmp_path, reader({}), reader({}))


def test_only_pods_asking_for_a_token_get_one() -> None:
    assert pod_files.wants_token({"spec": {"automountServiceAccountToken": True}})
    assert not pod_files.wants_token({"spec": {}})
    assert not pod_files.wants_token({"spec": {"automountServiceAccountToken": False}})
    lines = pod_files.token_prelude(Path("/tmp/sa dir"))
    assert lines[0] == "mount -t tmpfs tmpfs /run"
    assert lines[-1] == ("mount --bind '/tmp/sa dir' "
                         "/run/secrets/kubernetes.io/serviceaccount")

"""The pod configuration file (ATRIUM_K8S_POD_CONFIG) and how the registry uses it: no
cluster needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.settings import SettingsError, load_settings
from spawners import k8s_config
from spawners.k8s_config import load_pod_options, pod_options_from_mapping
from spawners.k8s_manifests import DESKTOP_SCRIPT, Placement, PodOptions, VolumeTemplate
from spawners.kubernetes import KubernetesBackend
from spawners.registry import make_backends


def documented_example() -> dict[str, Any]:
    """The example of the module docstring (the indented block after ``::``)."""
    doc = k8s_config.__doc__ or ""
    block = doc.split("::\n", 1)[1].split("\n\n", 1)[0]
    data: dict[str, Any] = yaml.safe_load(block)
    return data


def test_the_documented_example_is_valid() -> None:
    options = pod_options_from_mapping(documented_example())
    assert options.desktop_command == (DESKTOP_SCRIPT,)
    assert options.home_volume == VolumeTemplate(kind="nfs", server="nfs.example.org")
    assert options.placements["large-gpu"] == Placement(
        {"gpu": "a100"}, ({"key": "nvidia.com/gpu", "operator": "Exists",
                           "effect": "NoSchedule"},))
    assert options.extra_env == {"TZ": "Europe/Berlin"}


def test_absent_keys_take_the_defaults_which_match_the_images() -> None:
    assert pod_options_from_mapping({}) == PodOptions()
    no_desktop = pod_options_from_mapping({"desktop_command": []})
    assert no_desktop.desktop_command == ()


@pytest.mark.parametrize("data, key", [
    ({"jupyter_comand": ["x"]}, "unknown keys jupyter_comand"),
    ({"jupyter_command": "jupyter lab"}, "jupyter_command: expected a list"),
    ({"jupyter_command": []}, "jupyter_command: must not be empty"),
    ({"home_path": "home/{username}"}, "home_path: expected an absolute path"),
    ({"data_volume": {"kind": "cephfs"}}, "data_volume.kind"),
    ({"data_volume": {"kind": "nfs"}}, "needs a server"),
    ({"home_volume": {"kind": "pvc"}}, "needs a claim"),
    ({"data_volume": {"kind": "nfs", "sever": "x"}}, "data_volume: expected a mapping"),
    ({"placements": {"gpu": {"selector": {}}}}, "placements.gpu"),
    ({"placements": {"gpu": {"tolerations": "all"}}}, "placements.gpu.tolerations"),
    ({"extra_env": ["A=1"]}, "extra_env"),
    ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
    ({"termination_grace_s": -1}, "termination_grace_s"),
    ({"termination_grace_s": True}, "termination_grace_s"),
])
def test_mistakes_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        pod_options_from_mapping(data)


def test_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text("- jupyter\n")
    with pytest.raises(ValueError, match="mapping"):
        load_pod_options(path)
    path.write_text("jupyter_command: [unclosed\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_pod_options(path)


def settings_with(tmp_path: Path, **env: str) -> Any:
    return load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_BACKENDS": "kubernetes",
                          "ATRIUM_DEPLOYMENT_ID": "cfg-test", **env})


async def test_registry_builds_the_backend_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump({"jupyter_command": ["python3", "-m", "jupyterlab"],
                                    "termination_grace_s": 3}))
    backends = make_backends(settings_with(tmp_path, ATRIUM_K8S_POD_CONFIG=str(path)))
    backend = backends["kubernetes"]
    assert isinstance(backend, KubernetesBackend)
    try:
        assert backend.settings.pod == PodOptions(
            jupyter_command=("python3", "-m", "jupyterlab"), termination_grace_s=3)
    finally:
        await backend.close()


def test_bad_pod_config_is_a_settings_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"ATRIUM_K8S_POD_CONFIG.*no such file"):
        settings_with(tmp_path, ATRIUM_K8S_POD_CONFIG=str(tmp_path / "missing.yaml"))
    path = tmp_path / "pods.yaml"
    path.write_text("termination_grace_s: soon\n")
    with pytest.raises(SettingsError, match=r"ATRIUM_K8S_POD_CONFIG.*termination_grace_s"):
        make_backends(settings_with(tmp_path, ATRIUM_K8S_POD_CONFIG=str(path)))

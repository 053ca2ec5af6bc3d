"""Pure builders and pod reading: no cluster needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spawners.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    DataMount,
    InstanceSpec,
    Owner,
    Resources,
    ResourceState,
)
from spawners.k8s_manifests import (
    DESKTOP_PORT,
    IDENTITY_PROVIDER,
    Placement,
    PodOptions,
    VolumeTemplate,
    classify_pod,
    endpoints,
    make_pod,
    make_secret,
    make_service,
    object_name,
    pod_protocols,
    running_protocols,
    secret_owner_patch,
)

UID = "0123456789abcdef0123456789abcdef"


def spec(**kwargs: Any) -> InstanceSpec:
    values: dict[str, Any] = {
        "uid": UID, "name": "my session", "image_ref": "registry/lab:1", "flavour_ref": "gpu",
        "protocols": ("jupyter",), "owner": Owner("alice", uid=1234, gid=5678),
        "resources": Resources(cpus=2.5, memory_mb=4096, gpus=1),
        "mounts": (DataMount("p1", "/data/2026/p1", "data/p1"),
                   DataMount("p2", "/data/2026/p2", "data/p2", read_only=False)),
        "secrets": {"jupyter_token": "tok", "vnc_password": "pw"},
        "labels": {"owner": "alice@example.org"},
    }
    values.update(kwargs)
    return InstanceSpec(**values)


def lab(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "lab")


def test_pod_identity_labels_and_resources() -> None:
    pod = make_pod(spec(), "dep-1", "ns", PodOptions())
    meta = pod["metadata"]
    assert meta["name"] == object_name(UID) == f"atrium-{UID}"
    assert meta["namespace"] == "ns"
    assert meta["labels"] == {LABEL_INSTANCE: UID, LABEL_DEPLOYMENT: "dep-1"}
    assert meta["annotations"]["atrium/labels"] == '{"owner": "alice@example.org"}'
    c = lab(pod)
    assert c["image"] == "registry/lab:1"
    expected = {"cpu": "2500m", "memory": "4096Mi", "nvidia.com/gpu": "1"}
    assert c["resources"] == {"requests": expected, "limits": expected}
    security = pod["spec"]["securityContext"]
    assert security == {"runAsUser": 1234, "runAsGroup": 5678, "fsGroup": 5678,
                        "runAsNonRoot": True}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_pod_runs_jupyterlab_with_token_from_the_secret() -> None:
    pod = make_pod(spec(), "dep-1", "ns", PodOptions())
    c = lab(pod)
    args = c["args"]
    assert args[:2] == ["jupyter", "lab"]
    assert "--ip=$(POD_IP)" in args
    assert "--port=8888" in args
    assert f"--ServerApp.base_url=/instances/{UID}/lab/" in args
    assert f"--ServerApp.identity_provider_class={IDENTITY_PROVIDER}" in args
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["ATRIUM_SESSION_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": object_name(UID), "key": "jupyter_token"}}
    assert env["HOME"]["value"] == "/home/alice"
    assert c["workingDir"] == "/home/alice"
    # No secret value anywhere in the pod.
    assert "tok" not in str(pod).replace("token", "")
    assert c["readinessProbe"]["httpGet"] == {"path": f"/instances/{UID}/lab/api",
                                              "port": 8888}


def test_pod_with_jupyterlab_token_auth_when_no_identity_provider() -> None:
    pod = make_pod(spec(), "d", "ns", PodOptions(identity_provider="",
                                                 jupyter_command=("python", "-m", "jupyterlab"),
                                                 jupyter_extra_args=("--allow-root",)))
    c = lab(pod)
    assert c["args"][:3] == ["python", "-m", "jupyterlab"]
    assert c["args"][-1] == "--allow-root"
    assert not any("identity_provider" in a for a in c["args"])
    assert "JUPYTER_TOKEN" in {e["name"] for e in c["env"]}


def test_data_volumes_hostpath_read_only_in_the_home() -> None:
    pod = make_pod(spec(), "d", "ns", PodOptions())
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["home"] == {"name": "home", "emptyDir": {}}
    assert volumes["data-0"]["hostPath"] == {"path": "/data/2026/p1", "type": "Directory"}
    mounts = {m["mountPath"]: m for m in lab(pod)["volumeMounts"]}
    assert mounts["/home/alice/data/p1"]["readOnly"] is True
    # A DataMount asking for read_only=False is still mounted read-only.
    assert mounts["/home/alice/data/p2"]["readOnly"] is True


def test_data_volumes_pvc_share_one_volume_with_subpaths() -> None:
    options = PodOptions(data_volume=VolumeTemplate(kind="pvc", claim="facility", root="/data"),
                         home_volume=VolumeTemplate(kind="nfs", server="nfs.example"),
                         home_source="/export/home/{username}")
    pod = make_pod(spec(), "d", "ns", options)
    volumes = pod["spec"]["volumes"]
    claims = [v for v in volumes if "persistentVolumeClaim" in v]
    assert len(claims) == 1
    assert claims[0]["persistentVolumeClaim"] == {"claimName": "facility", "readOnly": True}
    home = next(v for v in volumes if v["name"] == "home")
    assert home["nfs"] == {"server": "nfs.example", "path": "/export/home/alice",
                           "readOnly": False}
    mounts = {m["mountPath"]: m for m in lab(pod)["volumeMounts"]}
    assert mounts["/home/alice/data/p1"]["subPath"] == "2026/p1"
    assert mounts["/home/alice/data/p2"]["subPath"] == "2026/p2"
    assert all(m["readOnly"] for p, m in mounts.items() if p.startswith("/home/alice/data"))


@pytest.mark.parametrize("mount, options", [
    (DataMount("x", "/data/x", "../etc"), PodOptions()),
    (DataMount("x", "/data/x", "/abs"), PodOptions()),
    (DataMount("x", "/elsewhere/x", "data/x"),
     PodOptions(data_volume=VolumeTemplate(kind="pvc", claim="c", root="/data"))),
])
def test_invalid_mounts_are_rejected(mount: DataMount, options: PodOptions) -> None:
    with pytest.raises(ValueError):
        make_pod(spec(mounts=(mount,)), "d", "ns", options)


def test_placement_per_flavour() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    options = PodOptions(placements={"gpu": Placement({"gpu": "a100"}, (toleration,))})
    pod = make_pod(spec(), "d", "ns", options)
    assert pod["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert pod["spec"]["tolerations"] == [toleration]
    plain = make_pod(spec(flavour_ref="small"), "d", "ns", options)
    assert "nodeSelector" not in plain["spec"] and "tolerations" not in plain["spec"]


def test_desktop_runs_the_image_script_and_gets_the_vnc_password() -> None:
    with pytest.raises(ValueError):
        make_pod(spec(protocols=("desktop",)), "d", "ns", PodOptions(desktop_command=()))
    pod = make_pod(spec(protocols=("jupyter", "desktop")), "d", "ns", PodOptions())
    desktop = next(c for c in pod["spec"]["containers"] if c["name"] == "desktop")
    # images/desktop/start-desktop.sh, where images/desktop/Dockerfile installs it.
    assert desktop["args"] == ["/usr/local/bin/start-desktop.sh",
                               f"--listen=$(POD_IP):{DESKTOP_PORT}"]
    password = next(e for e in desktop["env"] if e["name"] == "VNC_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["key"] == "vnc_password"
    assert desktop["readinessProbe"]["tcpSocket"]["port"] == DESKTOP_PORT
    assert desktop["resources"] == {}  # the pod's resources are claimed by JupyterLab
    assert pod_protocols(pod) == ("jupyter", "desktop")
    alone = make_pod(spec(protocols=("desktop",)), "d", "ns", PodOptions())
    assert alone["spec"]["containers"][0]["resources"]["limits"]["cpu"]


def test_invalid_uid_or_deployment_rejected() -> None:
    with pytest.raises(ValueError):
        make_pod(spec(uid="not a label!"), "d", "ns", PodOptions())
    with pytest.raises(ValueError):
        make_secret(spec(), "x" * 64, "ns")


def test_object_name_is_dns_safe_and_distinct() -> None:
    a, b = object_name("ABC_def"), object_name("abc-def")
    assert a != b
    assert len(object_name("a" * 63)) <= 63
    for name in (a, b, object_name("a" * 63)):
        assert name.replace("-", "").isalnum() and name == name.lower()


def test_secret_service_and_owner_patch() -> None:
    secret = make_secret(spec(), "d", "ns")
    assert secret["stringData"] == {"jupyter_token": "tok", "vnc_password": "pw"}
    assert secret["metadata"]["labels"][LABEL_INSTANCE] == UID
    service = make_service(spec(), "d", "ns")
    assert service["spec"]["selector"] == {LABEL_INSTANCE: UID, LABEL_DEPLOYMENT: "d"}
    assert service["spec"]["ports"][0]["port"] == 8888
    patch = secret_owner_patch({"metadata": {"name": "atrium-x", "uid": "u-1"}})
    ref = patch["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("Pod", "atrium-x", "u-1")


# ----------------------------------------------------------------- classify_pod


def pod_with(status: dict[str, Any], node: str = "n1", deleting: bool = False
             ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "labels": {LABEL_INSTANCE: UID}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "lab"}]},
            "status": status}


def test_classify_running() -> None:
    view = classify_pod(pod_with({
        "phase": "Running", "podIP": "10.0.0.5",
        "containerStatuses": [{"name": "lab", "state": {"running": {}}}]}))
    assert view.state is ResourceState.RUNNING and view.pod_ip == "10.0.0.5"
    assert running_protocols(pod_with({"containerStatuses": [
        {"name": "lab", "state": {"running": {}}},
        {"name": "desktop", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})) == {
        "jupyter"}
    assert endpoints(view.pod_ip, ("jupyter",)) == {"jupyter": "http://10.0.0.5:8888"}
    # The desktop speaks RFB: vnc:// as on the local backend (the bridge connects to it).
    assert endpoints(view.pod_ip, ("jupyter", "desktop"), host="s.ns.svc") == {
        "jupyter": "http://s.ns.svc:8888", "desktop": f"vnc://s.ns.svc:{DESKTOP_PORT}"}


def test_classify_pending_states() -> None:
    assert classify_pod(pod_with({}, node="")).reason == "waiting for the scheduler"
    creating = classify_pod(pod_with({"phase": "Pending", "containerStatuses": [
        {"name": "lab", "state": {"waiting": {"reason": "ContainerCreating"}}}]}))
    assert creating.state is ResourceState.PENDING
    assert "ContainerCreating" in creating.reason
    assert classify_pod(pod_with({"phase": "Running"}, deleting=True)).reason == \
        "pod is terminating"


@pytest.mark.parametrize("reason", ["CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff",
                                    "CreateContainerConfigError", "RunContainerError"])
def test_classify_container_failures(reason: str) -> None:
    view = classify_pod(pod_with({"phase": "Running", "containerStatuses": [{
        "name": "lab", "state": {"waiting": {"reason": reason, "message": "boom"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}))
    assert view.state is ResourceState.FAILED
    assert view.reason.startswith(f"container lab: {reason}: boom")
    if reason == "CrashLoopBackOff":
        assert "last exit code 1" in view.reason


def test_classify_unschedulable_with_grace() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    since = (now - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod = pod_with({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient cpu.",
        "lastTransitionTime": since}]}, node="")
    failed = classify_pod(pod, now=now)
    assert failed.state is ResourceState.FAILED
    assert failed.reason == "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    waiting = classify_pod(pod, now=now, unschedulable_grace_s=60)
    assert waiting.state is ResourceState.PENDING


def test_classify_terminal_phases() -> None:
    view = classify_pod(pod_with({"phase": "Failed", "containerStatuses": [{
        "name": "lab", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}]}))
    assert view.state is ResourceState.FAILED
    assert view.reason == "container lab exited with code 3: Error"
    evicted = classify_pod(pod_with({"phase": "Failed", "reason": "Evicted",
                                     "message": "The node was low on memory."}))
    assert evicted.reason == "The node was low on memory."

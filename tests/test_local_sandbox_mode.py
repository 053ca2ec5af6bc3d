"""ATRIUM_LOCAL_SANDBOX: required refuses to start without a sandbox; off-single-user serves
one user, with a warning on the dashboard; the settings are validated; the launch chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import SettingsError, load_settings
from spawners import registry, sandbox
from spawners.sandbox import Identity, SandboxPlan, bwrap_args, drop_privileges, launcher
from tests.conftest import AtriumServer, Databases, cleanup_sessions, need
from tests.sessions import launch, wait_for


def test_settings_are_validated(tmp_path: Path) -> None:
    env = {"ATRIUM_STATE_DIR": str(tmp_path)}
    assert load_settings(env).local_sandbox == "required"
    for name, value, message in (
            ("ATRIUM_LOCAL_SANDBOX", "off", "expected required or off-single-user"),
            ("ATRIUM_LOCAL_RUN_DIR", "relative/dir", "an absolute path"),
            ("ATRIUM_LOCAL_RUN_DIR", "/" + "x" * 80, "at most 60 characters"),
            ("ATRIUM_LOCAL_CGROUP_PARENT", "../escape", "names of letters"),
            ("ATRIUM_LOCAL_PIDS_MAX", "3", "ATRIUM_LOCAL_PIDS_MAX")):
        with pytest.raises(SettingsError, match=message) as err:
            load_settings({**env, name: value})
        assert name in str(err.value)


def test_required_sandbox_refuses_to_start_without_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "bwrap is not installed")
    with pytest.raises(SettingsError, match="cannot be sandboxed: bwrap is not installed"):
        registry.make_backends(load_settings({"ATRIUM_STATE_DIR": str(tmp_path)}))


def test_launch_chain_drops_everything() -> None:
    """The privileged bwrap has no --die-with-parent (sessions outlive a portal crash), and
    the session's command runs after setpriv dropped uid, groups and every capability."""
    plan = SandboxPlan(
        identity=Identity(20001, 20001, (30000,)), home=(Path("/s/i/home"), Path("/home/al")),
        run_dir=Path("/run/atrium/d.i"), x11_dir=Path("/run/atrium/d.i/x11"),
        state_dirs=((Path("/s/i/jupyter"), Path("/opt/atrium/jupyter")),),
        data=((Path("/data/p1"), Path("/home/al/data/p1")),),
        python_dirs=(Path("/opt/venv"),), images_dir=None, script=Path("/s/i/session.sh"))
    args = bwrap_args(plan)
    assert "--die-with-parent" not in args and "--unshare-net" in args
    pairs = [(a, args[i + 1], args[i + 2]) for i, a in enumerate(args[:-2])]
    assert ("--ro-bind", "/data/p1", "/home/al/data/p1") in pairs
    assert ("--bind", "/s/i/home", "/home/al") in pairs
    assert not any(a.startswith("/s/") for a in args if a != "/s/i/home" and
                   not a.startswith(("/s/i/home", "/s/i/jupyter", "/s/i/session.sh")))
    assert "/" not in [args[i + 1] for i, a in enumerate(args) if a in ("--bind", "--ro-bind")]
    assert drop_privileges(plan.identity) == [
        "setpriv", "--reuid", "20001", "--regid", "20001", "--groups", "30000",
        "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    command = launcher(Path("/s/i/args"), [Path("/cg/memory/x/cgroup.procs")], ["--", "true"])
    assert command[:2] == ["sh", "-c"] and command[-2:] == ["--", "true"]


def test_off_single_user_serves_one_user_and_says_so(
        databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("single"),
                       ATRIUM_LOCAL_SANDBOX="off-single-user")
    srv.cli("demo", "--seed-only")
    srv.start()
    try:
        alice, bob = srv.client("alice"), srv.client("bob")
        first = launch(alice, "mine")
        wait_for(alice, first, {"ACTIVE"})
        page = alice.get("/")
        assert page.status_code == 200 and 'id="unsandboxed"' in page.text
        second = launch(bob, "refused")
        state = wait_for(bob, second, {"ERROR"})
        assert "serves one user only, and alice has sessions here" in state["reason"]
        alice.delete(f"/api/v1/instances/{first}")
        wait_for(alice, first, {"DELETED"})
    finally:
        srv.stop()
        cleanup_sessions(srv)


def test_mount_points_are_plain_directories_again(tmp_path: Path) -> None:
    """A session that swapped its data mount point for a link gets a directory back (the
    data is bound onto a directory of the home, nowhere else)."""
    import os
    import sys

    from spawners.base import DataMount, InstanceSpec, Owner
    from spawners.cgroups import Layout
    from spawners.local_sandbox import LocalOptions, Sandboxes

    need(os.geteuid() == 0, "handing the home to another uid needs root")
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "data" / "p1").symlink_to("/etc")
    spec = InstanceSpec(uid="u1", name="n", image_ref="jupyterlab", flavour_ref="",
                        protocols=("jupyter",), owner=Owner("alice", uid=20999, gid=20999),
                        mounts=(DataMount("p1", "/nonexistent", "data/p1"),))
    Sandboxes("dep", LocalOptions(), sys.executable, Layout()).prepare_home(home, spec)
    point = home / "data" / "p1"
    assert point.is_dir() and not point.is_symlink() and point.stat().st_uid == 20999
    assert home.stat().st_uid == 20999 and home.stat().st_mode & 0o777 == 0o700

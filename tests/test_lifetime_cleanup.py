"""Cleanup: an expired instance killed -9 mid-deletion is deleted after the restart with
nothing leaked; the scheduled zombie sweep removes labelled resources of no instance, marks
instances whose resources vanished, and never touches unlabelled or foreign resources."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.lifetime_helpers import SmtpSink, lifetime_env, query, smtp_server
from tests.sessions import launch, processes_of, run_code, wait_for
from tests.sweeps import wait_for_sweeps

# A child of the session that ignores SIGTERM: deletion must wait for it (SIGKILL after
# the grace period), which leaves time to kill the portal in the middle.
STUBBORN = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
            "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "time.sleep(600)'], start_new_session=True); 'started'")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_server() as s:
        yield s


@pytest.mark.slow
async def test_sigkill_mid_expiry_deletion_then_restart(
        databases: Databases, tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink) -> None:
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("expiry-crash"),
                       **lifetime_env(sink))
    srv.cli("demo", "--seed-only")
    srv.start()
    try:
        alice = srv.client("alice")
        uid = launch(alice, "doomed")
        wait_for(alice, uid, {"ACTIVE"})
        assert await run_code(srv.url, uid, srv.token("alice"), STUBBORN) == "'started'"
        assert len(processes_of(srv.deployment, uid)) >= 3  # lab, kernel, stubborn child
        # The owner ends it in 3 s: warned at once (within 48 h), deleted at the deadline.
        end = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=3)
        r = alice.patch(f"/api/v1/instances/{uid}/lifetime",
                        json={"termination_date": end.isoformat()})
        assert r.status_code == 200, r.text
        wait_for(alice, uid, {"DELETING"}, timeout=30)
        srv.kill()
        # Mid-deletion: the row says DELETING, the stubborn process still runs.
        [(status, target)] = query(srv.env["ATRIUM_DATABASE_URL"],
                                   "SELECT status, target FROM instances WHERE uid = :uid",
                                   uid=uid)
        assert (status, target) == ("DELETING", "DELETED")
        assert processes_of(srv.deployment, uid)

        srv.start()
        alice = srv.client("alice")
        wait_for(alice, uid, {"DELETED"}, timeout=60)
        assert processes_of(srv.deployment, uid) == []
        assert not (srv.state_dir / "sessions" / uid).exists()
        kinds = [e["kind"] for e in srv.client("admin").get(
            f"/api/v1/instances/{uid}/events").json()]
        assert kinds.index("warn-lifetime") < kinds.index("expired") < kinds.index("deleted")
        assert kinds.count("expired") == 1
        sink.wait(lambda ms: any("alice@example.org" in m.to and "has been deleted" in m.subject
                                 for m in ms))
        subjects = [m.subject for m in sink.to("alice@example.org")]
        assert sum("will be deleted on" in s for s in subjects) == 1  # one warning
        assert sum("has been deleted" in s for s in subjects) == 1
    finally:
        srv.stop()
        cleanup_sessions(srv)


def _spawn(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"], env={"PATH": os.environ["PATH"], **env},
                            start_new_session=True)


async def test_zombie_sweep(databases: Databases, tmp_path_factory: pytest.TempPathFactory,
                            sink: SmtpSink) -> None:
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("zombies"),
                       **lifetime_env(sink))
    srv.cli("demo", "--seed-only")
    srv.start()
    sessions = srv.state_dir / "sessions"
    strays: list[subprocess.Popen[bytes]] = []
    try:
        alice = srv.client("alice")
        uid = launch(alice, "vanishing")
        wait_for(alice, uid, {"ACTIVE"})
        # Labelled with this deployment but no instance row: a process and a folder.
        zombie = _spawn({"ATRIUM_INSTANCE": "deadbeef0001", "ATRIUM_DEPLOYMENT": srv.deployment})
        (sessions / "deadbeef0002").mkdir()
        (sessions / "deadbeef0002" / "labels.json").write_text(json.dumps(
            {"atrium/instance": "deadbeef0002", "atrium/deployment": srv.deployment}))
        # Unlabelled, or another deployment's: never touched.
        plain = _spawn({})
        foreign = _spawn({"ATRIUM_INSTANCE": "deadbeef0003", "ATRIUM_DEPLOYMENT": "other"})
        (sessions / "deadbeef0004").mkdir()
        (sessions / "deadbeef0004" / "labels.json").write_text(json.dumps(
            {"atrium/instance": "deadbeef0004", "atrium/deployment": "other"}))
        (sessions / "notes").mkdir()
        strays += [zombie, plain, foreign]
        # The instance's own processes die behind Atrium's back: its resources vanished.
        for pid in processes_of(srv.deployment, uid):
            with contextlib.suppress(ProcessLookupError):  # one may end with its parent
                os.kill(pid, signal.SIGKILL)

        deadline = time.monotonic() + 90  # bounded waits, generous for a busy machine
        while zombie.poll() is None or (sessions / "deadbeef0002").exists():
            assert time.monotonic() < deadline, "the zombies were not removed"
            time.sleep(0.2)
        deadline = time.monotonic() + 90
        while (state := alice.get(f"/api/v1/instances/{uid}").json())["status"] != "ERROR":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert "exited" in state["reason"] or "vanished" in state["reason"]
        # Several more sweeps: the others are still there.
        wait_for_sweeps(srv, whole=2, timeout=30)
        assert plain.poll() is None and foreign.poll() is None
        assert (sessions / "deadbeef0004" / "labels.json").exists()
        assert (sessions / "notes").is_dir()
    finally:
        for proc in strays:
            proc.kill()
            proc.wait()
        srv.stop()
        cleanup_sessions(srv)

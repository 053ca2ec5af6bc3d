"""Kill -9 the portal mid-launch: after a restart nothing is lost and nothing leaks."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.sessions import launch, processes_of, run_code, wait_for


@pytest.mark.slow
async def test_sigkill_mid_launch_then_restart(databases: Databases,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("crash"))
    srv.cli("demo", "--seed-only")
    srv.start()
    try:
        alice = srv.client("alice")
        first = launch(alice, "survivor", ["20261001"])
        wait_for(alice, first, {"ACTIVE"})
        second = launch(alice, "interrupted", ["20261002"])
        # Kill while the second one is being created or started.
        deadline = time.monotonic() + 20
        while alice.get(f"/api/v1/instances/{second}").json()["status"] == "BUILDING":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        srv.kill()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{srv.url}/healthz", timeout=1)
        # The first session outlives the portal.
        assert processes_of(srv.deployment, first)

        srv.start()
        alice = srv.client("alice")
        assert alice.get(f"/instances/{first}/lab/api/status").status_code == 200
        assert await run_code(srv.url, first, srv.token("alice"), "1+1") == "2"
        # The interrupted launch finishes (the README's claim): ACTIVE, reachable, and
        # exactly one JupyterLab: the interrupted start's process was adopted, not duplicated.
        state = wait_for(alice, second, {"ACTIVE"})
        assert state["status"] == "ACTIVE", state
        assert alice.get(f"/instances/{second}/lab/api/status").status_code == 200
        servers = [p for p in processes_of(srv.deployment, second)
                   if b"jupyterlab" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(servers) == 1, servers

        for uid in (first, second):
            alice.delete(f"/api/v1/instances/{uid}")
        for uid in (first, second):
            wait_for(alice, uid, {"DELETED"})
            assert processes_of(srv.deployment, uid) == []
    finally:
        srv.stop()
        cleanup_sessions(srv)


async def test_orphaned_session_is_removed_by_the_sweep(
        databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A labelled session with no instance row (e.g. the row was lost) is deleted."""
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("orphan"))
    srv.cli("demo", "--seed-only")
    srv.start()
    try:
        alice = srv.client("alice")
        uid = launch(alice, "soon-orphaned")
        wait_for(alice, uid, {"ACTIVE"})
        srv.kill()
        # Forget the instance behind Atrium's back, leaving its process running.
        import asyncio

        from sqlalchemy import delete

        from orchestrator.db import Database
        from orchestrator.models import Instance
        from orchestrator.settings import normalise_database_url

        async def forget() -> None:
            db = Database(normalise_database_url(srv.env["ATRIUM_DATABASE_URL"]))
            async with db.session() as s:
                await s.execute(delete(Instance).where(Instance.uid == uid))
                await s.commit()
            await db.close()

        await forget()
        assert processes_of(srv.deployment, uid)
        srv.start()
        deadline = time.monotonic() + 30
        while processes_of(srv.deployment, uid) or (srv.state_dir / "sessions" / uid).exists():
            assert time.monotonic() < deadline, "the orphan was not removed"
            await asyncio.sleep(0.2)
    finally:
        srv.stop()
        cleanup_sessions(srv)

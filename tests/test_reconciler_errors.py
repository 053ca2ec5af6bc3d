"""The reconciler's error branches, on SQLite and PostgreSQL, with a scripted backend.

Each test drives the portal's own :class:`Reconciler` against a real database; only the
backend is a double (tests/scripted_backend.py) so that it fails exactly where the branch
under test needs it to. Waits are for the reconciler's own work (``idle()``), never sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, update

from orchestrator import lifecycle
from orchestrator.db import Database
from orchestrator.demo import seed
from orchestrator.models import Instance, InstanceEvent, InstanceStatus, Target, User, utcnow
from orchestrator.reconciler import Reconciler, unavailable_reason
from orchestrator.settings import normalise_database_url
from spawners.base import Backend, BackendError, CapacityError
from tests.conftest import Databases
from tests.scripted_backend import RUNNING_READY, RUNNING_SILENT, STOPPED, ScriptedBackend

S = InstanceStatus
pytestmark = pytest.mark.timeout(60)


@dataclass
class Bench:
    db: Database
    reconcilers: list[Reconciler]

    def reconciler(self, backends: Mapping[str, Backend], **options: float) -> Reconciler:
        r = Reconciler(self.db, backends, **options)
        self.reconcilers.append(r)
        return r

    async def launch(self, name: str) -> str:
        """alice's instance of the preset plan (backend ``local``), not yet driven."""
        async with self.db.session() as s:
            user = await s.scalar(select(User).where(User.username == "alice"))
            assert user is not None
            plans = await lifecycle.plans_for(s, user, ["local"])
            preset = next(p for p in plans if p.preset)
            instance = await lifecycle.launch(s, user, name=name, plan_id=preset.id,
                                              experiment_ids=[], backends=["local"], quota=10)
            await s.commit()
            return instance.uid

    async def get(self, uid: str) -> Instance:
        async with self.db.session() as s:
            instance = await s.scalar(select(Instance).where(Instance.uid == uid))
            assert instance is not None
            return instance

    async def write(self, uid: str, **values: object) -> None:
        async with self.db.session() as s:
            await s.execute(update(Instance).where(Instance.uid == uid).values(**values))
            await s.commit()

    async def quiet(self, uid: str) -> None:
        """Nobody has written to the instance for an hour (no replica is driving it)."""
        await self.write(uid, updated_at=utcnow() - dt.timedelta(hours=1))

    async def events(self, uid: str) -> list[str]:
        instance = await self.get(uid)
        async with self.db.session() as s:
            rows = await s.scalars(select(InstanceEvent.kind)
                                   .where(InstanceEvent.instance_id == instance.id)
                                   .order_by(InstanceEvent.id))
            return list(rows)


@pytest.fixture
async def bench(databases: Databases, tmp_path: Path) -> AsyncIterator[Bench]:
    db = Database(normalise_database_url(databases.new()))
    await db.upgrade()
    await seed(db, tmp_path / "demo-data")
    b = Bench(db, [])
    yield b
    for r in b.reconcilers:
        await r.stop()
    await db.close()


async def drive(reconciler: Reconciler, uid: str) -> None:
    reconciler.kick(uid)
    await asyncio.wait_for(reconciler.idle(), 30)


async def test_start_timeout_is_an_error_naming_the_wait(bench: Bench) -> None:
    backend = ScriptedBackend(observations=[RUNNING_SILENT])  # runs, never answers
    r = bench.reconciler({"local": backend}, start_timeout=1.0)
    uid = await bench.launch("silent")
    await drive(r, uid)
    instance = await bench.get(uid)
    assert instance.status is S.ERROR
    assert instance.status_reason == "the session did not answer within 1 s"
    assert instance.backend_state == {"id": f"res-{uid}"}  # kept: a delete finds it
    assert (await bench.events(uid))[-1] == "error"


async def test_backend_no_longer_configured_is_unavailable_and_not_retried(
        bench: Bench) -> None:
    launched, deleting, active = [await bench.launch(n) for n in ("new", "gone", "rest")]
    await bench.write(deleting, target=Target.DELETED, status=S.ERROR)
    await bench.write(active, status=S.ACTIVE)  # at rest: keeps its last observed state
    for uid in (launched, deleting, active):
        await bench.quiet(uid)
    r = bench.reconciler({})  # the "local" backend was removed from the settings
    assert (await r.reconcile_all()).kicked == 2
    await asyncio.wait_for(r.idle(), 30)
    for uid in (launched, deleting):
        instance = await bench.get(uid)
        assert instance.status is S.UNAVAILABLE, uid
        assert instance.status_reason == unavailable_reason("local")
        assert instance.status_reason == "the local backend is not configured"
    assert (await bench.get(active)).status is S.ACTIVE

    # Later sweeps leave them alone: no kick, no new event.
    for uid in (launched, deleting):
        await bench.quiet(uid)
    for _ in range(2):
        assert (await r.reconcile_all()).kicked == 0
    assert (await bench.events(launched)).count("unavailable") == 1

    # The backend is configured again: the sweep drives them as usual.
    backend = ScriptedBackend()
    r2 = bench.reconciler({"local": backend})
    assert (await r2.reconcile_all()).kicked == 3
    await asyncio.wait_for(r2.idle(), 30)
    assert (await bench.get(launched)).status is S.ACTIVE
    assert (await bench.get(deleting)).status is S.DELETED
    # The one left ACTIVE is compared with the backend again (listed without resources).
    assert active in backend.called("observe")
    assert backend.called("create") == [launched]
    assert backend.called("delete") == [deleting]


async def test_capacity_error_releases_what_the_launch_allocated(bench: Bench) -> None:
    backend = ScriptedBackend(create_error=CapacityError("no room: 0 of 4 GPUs free"))
    r = bench.reconciler({"local": backend})
    uid = await bench.launch("no-room")
    await drive(r, uid)
    instance = await bench.get(uid)
    assert (instance.status, instance.status_reason) == (S.ERROR, "no room: 0 of 4 GPUs free")
    assert backend.called("delete") == [uid]
    assert backend.resources == {} and instance.backend_state == {}


async def test_failed_release_after_a_capacity_error_keeps_the_ids(bench: Bench) -> None:
    backend = ScriptedBackend(create_error=CapacityError("quota exceeded"),
                              delete_errors=[BackendError("the provider is down")])
    r = bench.reconciler({"local": backend})
    uid = await bench.launch("no-room")
    await drive(r, uid)
    instance = await bench.get(uid)
    assert (instance.status, instance.status_reason) == (S.ERROR, "quota exceeded")
    # The release failed: the ids stay recorded so that deleting the instance finds them.
    assert instance.backend_state == {"id": f"res-{uid}"}
    assert backend.resources == {uid: {"id": f"res-{uid}"}}
    await bench.write(uid, target=Target.DELETED)
    await drive(r, uid)
    assert (await bench.get(uid)).status is S.DELETED
    assert backend.called("delete") == [uid, uid] and backend.resources == {}


async def test_a_start_interrupted_by_a_crash_is_restarted_once(bench: Bench) -> None:
    backend = ScriptedBackend(observations=[STOPPED, RUNNING_READY])
    r = bench.reconciler({"local": backend})
    uid = await bench.launch("restarted")
    await drive(r, uid)
    assert (await bench.get(uid)).status is S.ACTIVE
    assert backend.called("start") == [uid]


async def test_a_start_that_stops_again_is_an_error_after_one_restart(bench: Bench) -> None:
    backend = ScriptedBackend(observations=[STOPPED])  # stops whatever is done
    r = bench.reconciler({"local": backend})
    uid = await bench.launch("stops")
    await drive(r, uid)
    instance = await bench.get(uid)
    assert (instance.status, instance.status_reason) == (
        S.ERROR, "the session stopped while starting")
    assert backend.called("start") == [uid]  # once, not in a loop


async def test_an_orphan_whose_delete_fails_is_logged_and_retried(
        bench: Bench, caplog: pytest.LogCaptureFixture) -> None:
    backend = ScriptedBackend(resources={"ghost": {"id": "res-ghost"}},
                              delete_errors=[BackendError("the provider is down")])
    r = bench.reconciler({"local": backend})
    with caplog.at_level(logging.WARNING, logger="atrium.reconciler"):
        assert (await r.reconcile_all()).orphans_deleted == 0
    assert "could not delete orphan ghost" in caplog.text
    assert "the provider is down" in caplog.text
    assert backend.resources == {"ghost": {"id": "res-ghost"}}  # not forgotten
    assert (await r.reconcile_all()).orphans_deleted == 1  # the next sweep tries again
    assert backend.called("delete") == ["ghost", "ghost"] and backend.resources == {}
    assert (await r.reconcile_all()).orphans_deleted == 0


async def test_an_instance_another_replica_is_driving_is_left_alone(bench: Bench) -> None:
    backend = ScriptedBackend()
    r = bench.reconciler({"local": backend}, interval=2.0)  # busy window: 5 s
    uid = await bench.launch("elsewhere")
    # Another replica created it and is waiting for it: it refreshed updated_at just now.
    await bench.write(uid, status=S.STARTING, backend_state={"id": "res-x"},
                      updated_at=utcnow() - dt.timedelta(seconds=1))
    backend.resources[uid] = {"id": "res-x"}
    report = await r.reconcile_all()
    assert (report.kicked, report.orphans_deleted) == (0, 0)
    assert backend.calls == [("list_managed", "")]  # no observe, no create, no delete
    # That replica died: once the row has been quiet for the busy window, this one takes over.
    await bench.write(uid, updated_at=utcnow() - dt.timedelta(seconds=6))
    assert (await r.reconcile_all()).kicked == 1
    await asyncio.wait_for(r.idle(), 30)
    assert (await bench.get(uid)).status is S.ACTIVE
    assert backend.called("create") == []  # adopted, observed, not created again

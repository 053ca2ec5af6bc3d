"""A scripted timeline with the injectable clock: launch, warnings at the right times (to a
real SMTP server), reconnecting cancels an inactivity deletion, an accepted extension moves
the date, expiry deletes through the reconciler (real local sessions, processes gone).

Runs in-process on SQLite and PostgreSQL: the lifetime service, the reconciler and the
local backend are the portal's own, only the clock is scripted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator import extensions, lifecycle
from orchestrator.db import Database
from orchestrator.demo import seed
from orchestrator.lifetime import LifetimeService
from orchestrator.lifetime_policy import LifetimePolicy
from orchestrator.models import (
    ExtensionStatus,
    Instance,
    InstanceEvent,
    InstanceStatus,
    Notification,
    NotificationStatus,
    Target,
    User,
    utcnow,
)
from orchestrator.notify import Mailer
from orchestrator.reconciler import Reconciler
from orchestrator.settings import Settings, load_settings
from spawners.local import LocalBackend
from spawners.localproc import labelled_processes
from tests.conftest import Databases
from tests.lifetime_helpers import ScriptedClock, SmtpSink, smtp  # noqa: F401

DAY = dt.timedelta(days=1)


@dataclass
class World:
    settings: Settings
    db: Database
    clock: ScriptedClock
    service: LifetimeService
    reconciler: Reconciler
    deployment: str

    async def user(self, name: str) -> User:
        async with self.db.session() as s:
            user = await s.scalar(select(User).where(User.username == name))
            assert user is not None
            return user

    async def launch(self, username: str, name: str, start: bool = True) -> str:
        """Launch as ``username``; ``start``: let the reconciler run the session."""
        async with self.db.session() as s:
            user = await s.scalar(select(User).where(User.username == username))
            assert user is not None
            plans = await lifecycle.plans_for(s, user, ["local"])
            preset = next(p for p in plans if p.preset)
            instance = await lifecycle.launch(
                s, user, name=name, plan_id=preset.id, experiment_ids=[], backends=["local"],
                quota=10, now=self.clock, lifetime=self.service.policy)
            await s.commit()
            uid = instance.uid
        if start:
            self.reconciler.kick(uid)
        return uid

    async def instance(self, uid: str) -> Instance:
        async with self.db.session() as s:
            instance = await s.scalar(select(Instance).where(Instance.uid == uid))
            assert instance is not None
            return instance

    async def wait_status(self, uid: str, status: InstanceStatus, timeout: float = 120) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.instance(uid)).status is not status:
            current = await self.instance(uid)
            assert current.status is not InstanceStatus.ERROR, current.status_reason
            assert asyncio.get_running_loop().time() < deadline, current.status
            await asyncio.sleep(0.1)

    async def use(self, uid: str) -> None:
        """Someone used the instance "now" (as the proxy records it), then the flush."""
        self.service.activity[uid] = self.clock.epoch()
        assert await self.service.flush_activity() == 1

    async def events(self, uid: str) -> list[str]:
        async with self.db.session() as s:
            instance = await s.scalar(select(Instance).where(Instance.uid == uid))
            assert instance is not None
            rows = await s.scalars(select(InstanceEvent.kind)
                                   .where(InstanceEvent.instance_id == instance.id)
                                   .order_by(InstanceEvent.id))
            return list(rows)


@pytest.fixture
async def world(databases: Databases, tmp_path: Path, smtp: SmtpSink  # noqa: F811
                ) -> AsyncIterator[World]:
    deployment = f"t{secrets.token_hex(4)}"
    settings = load_settings({
        "ATRIUM_DATABASE_URL": databases.new(), "ATRIUM_STATE_DIR": str(tmp_path),
        "ATRIUM_DEMO_MODE": "1", "ATRIUM_DEPLOYMENT_ID": deployment,
        "ATRIUM_SMTP_HOST": "127.0.0.1", "ATRIUM_SMTP_PORT": str(smtp.port),
        "ATRIUM_SMTP_FROM": "atrium@facility.test",
        "ATRIUM_PUBLIC_URL": "https://atrium.facility.test"})
    db = Database(settings.database_url)
    await db.upgrade()
    await seed(db, tmp_path / "demo-data")
    reconciler = Reconciler(db, {"local": LocalBackend(deployment, settings.sessions_dir,
                                                       sys.executable)}, start_timeout=120)
    clock = ScriptedClock(utcnow())
    service = LifetimeService(db, LifetimePolicy.from_settings(settings), Mailer(settings),
                              public_url=settings.public_url, clock=clock, activity={},
                              on_delete=reconciler.kick)
    yield World(settings, db, clock, service, reconciler, deployment)
    await reconciler.stop()
    for pids in labelled_processes(deployment).values():
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    await db.close()


async def test_scripted_timeline(world: World, smtp: SmtpSink) -> None:  # noqa: F811
    w, clock = world, world.clock
    alice = await w.launch("alice", "timeline")
    bob = await w.launch("bob", "forgotten")
    await w.wait_status(alice, InstanceStatus.ACTIVE)
    await w.wait_status(bob, InstanceStatus.ACTIVE)
    # Users get 14 days from launch (the clock's "now").
    assert (await w.instance(alice)).termination_date == clock.start + 14 * DAY

    # Day 2, 23 h: nothing is due yet (inactivity: 4 days, warned 24 h before).
    clock.at(days=2, hours=23)
    assert (await w.service.warn()).warned == []
    assert smtp.messages == []
    assert w.service.banner_of(await w.instance(alice)) is None

    # Day 3 + 1 min: both owners are warned of the inactivity deletion, by email and banner.
    clock.at(days=3, minutes=1)
    report = await w.service.warn()
    assert sorted(report.warned) == sorted([(alice, "inactivity"), (bob, "inactivity")])
    assert report.sent == 2
    [to_alice] = smtp.to("alice@example.org")
    assert "unused" in to_alice.subject and "timeline" in to_alice.subject
    assert f"https://atrium.facility.test/instances/{alice}" in to_alice.body
    banner = w.service.banner_of(await w.instance(alice))
    assert banner is not None and banner.kind == "inactivity"
    # Each warning is sent once.
    assert (await w.service.warn()).warned == []
    assert len(smtp.messages) == 2

    # Alice reconnects: her pending inactivity deletion is cancelled (recorded), bob's not.
    clock.at(days=3, hours=2)
    await w.use(alice)
    assert (await w.instance(alice)).last_seen_at == clock.now
    assert (await w.service.warn()).cancelled == [(alice, "inactivity")]
    assert "deletion-cancelled" in await w.events(alice)
    assert w.service.banner_of(await w.instance(alice)) is None

    # Day 4 + 1 min: bob's unused instance is deleted through the reconciler; alice's stays.
    clock.at(days=4, minutes=1)
    assert await w.service.expire() == [bob]
    await w.reconciler.idle()
    await w.wait_status(bob, InstanceStatus.DELETED)
    assert labelled_processes(w.deployment).get(bob) is None
    assert not (w.settings.sessions_dir / bob).exists()
    assert (await w.instance(alice)).status is InstanceStatus.ACTIVE
    assert (await w.instance(bob)).target is Target.DELETED
    assert "expired" in await w.events(bob)
    assert (await w.service.warn()).sent == 1  # the deletion notice
    [gone] = [m for m in smtp.to("bob@example.org") if "deleted" in m.subject.lower()
              and "unused" not in m.subject]
    assert "nobody had used it" in gone.body

    # Day 5: alice asks for 7 more days; the admin is emailed, accepts; the date moves.
    clock.at(days=5)
    await w.use(alice)
    async with w.db.session() as s:
        instance = await s.scalar(select(Instance).where(Instance.uid == alice))
        assert instance is not None
        request = await extensions.request_extension(
            s, instance.owner, instance, days=7,
            reason="the last runs arrive late", service=w.service)
        await s.commit()
        request_id = request.id
    assert request.status is ExtensionStatus.PENDING
    await w.service.deliver()
    [asked] = smtp.to("admin@example.org")
    assert "Extension requested" in asked.subject and "the last runs arrive late" in asked.body
    async with w.db.session() as s:
        admin = await s.scalar(select(User).where(User.username == "admin"))
        assert admin is not None
        decided = await extensions.decide(s, admin, request_id, accept=True, service=w.service,
                                          comment="fine")
        await s.commit()
    assert decided.status is ExtensionStatus.ACCEPTED
    await w.service.deliver()
    assert (await w.instance(alice)).termination_date == clock.start + 21 * DAY
    [accepted] = [m for m in smtp.to("alice@example.org") if "Extension accepted" in m.subject]
    assert (clock.start + 21 * DAY).strftime("%Y-%m-%d %H:%M") in accepted.body

    # Alice keeps using it every few days: no inactivity warning, no deletion.
    for day in (8, 11, 14, 17, 18):
        clock.at(days=day)
        await w.use(alice)
        assert (await w.service.warn()).warned == []
        assert await w.service.expire() == []

    # 48 h before the (extended) end: the lifetime warning.
    clock.at(days=19, minutes=1)
    assert (await w.service.warn()).warned == [(alice, "lifetime")]
    [warned] = [m for m in smtp.to("alice@example.org") if "will be deleted on" in m.subject
                and "unused" not in m.subject]
    assert (clock.start + 21 * DAY).strftime("%Y-%m-%d %H:%M") in warned.subject
    assert await w.service.expire() == []

    # The end: deleted, processes gone, owner told.
    clock.at(days=21, minutes=1)
    assert await w.service.expire() == [alice]
    await w.reconciler.idle()
    await w.wait_status(alice, InstanceStatus.DELETED)
    assert labelled_processes(w.deployment).get(alice) is None
    assert not (w.settings.sessions_dir / alice).exists()
    await w.service.warn()
    assert any("has been deleted" in m.subject for m in smtp.to("alice@example.org"))
    async with w.db.session() as s:
        states = set((await s.scalars(select(Notification.status))).all())
    assert states == {NotificationStatus.SENT}


async def test_no_deletion_without_a_warning(world: World, smtp: SmtpSink  # noqa: F811
                                             ) -> None:
    """Past its deadline but never warned (e.g. the scheduler was down): warned first,
    deleted at a later sweep. Uses no session: the row is enough."""
    w, clock = world, world.clock
    uid = await w.launch("carol", "late", start=False)  # staff: 60 days, inactivity 8 days
    created = (await w.instance(uid)).termination_date
    assert created == clock.start + 60 * DAY
    clock.at(days=61)
    assert await w.service.expire() == []  # not warned: not deleted
    report = await w.service.warn()
    assert (uid, "lifetime") in report.warned or (uid, "inactivity") in report.warned
    assert smtp.to("carol@example.org")
    assert await w.service.expire() == [uid]


async def test_auto_accepted_extension_and_shortening(world: World, smtp: SmtpSink  # noqa: F811
                                                      ) -> None:
    w = world
    w.service.policy = LifetimePolicy(auto_accept_days={"STAFF": 10})
    uid = await w.launch("carol", "auto", start=False)
    async with w.db.session() as s:
        instance = await s.scalar(select(Instance).where(Instance.uid == uid))
        carol = await s.scalar(select(User).where(User.username == "carol"))
        assert instance is not None and carol is not None
        request = await extensions.request_extension(s, carol, instance, days=5,
                                                     reason="more fitting", service=w.service)
        await s.commit()
    assert request.status is ExtensionStatus.ACCEPTED and request.auto
    assert (await w.instance(uid)).termination_date == w.clock.start + 65 * DAY
    await w.service.deliver()
    assert any("Extension accepted" in m.subject for m in smtp.to("carol@example.org"))
    assert any("Extension granted" in m.subject for m in smtp.to("admin@example.org"))
    # More than the auto-accepted maximum waits for an admin.
    async with w.db.session() as s:
        instance = await s.scalar(select(Instance).where(Instance.uid == uid))
        carol = await s.scalar(select(User).where(User.username == "carol"))
        assert instance is not None and carol is not None
        request = await extensions.request_extension(s, carol, instance, days=30,
                                                     reason="much more", service=w.service)
        await s.commit()
        assert request.status is ExtensionStatus.PENDING
        # Shortening: only earlier than now's end, only in the future.
        with pytest.raises(Exception, match="must come before"):
            await extensions.shorten(s, carol, instance, "2999-01-01T00:00", w.service)
        with pytest.raises(Exception, match="in the future"):
            await extensions.shorten(s, carol, instance, "2000-01-01T00:00Z", w.service)
        soon = w.clock.now + dt.timedelta(days=2)
        await extensions.shorten(s, carol, instance, soon.isoformat() + "Z", w.service)
        await s.commit()
    assert (await w.instance(uid)).termination_date == soon

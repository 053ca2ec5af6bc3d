"""Lifetime and inactivity: the jobs that warn owners and delete what has expired, and the
activity flush. Nothing runs forever, nothing is deleted by surprise.

* :meth:`LifetimeService.flush_activity` (every process, often): writes the activity this
  process recorded in memory to ``Instance.last_seen_at``, one UPDATE per flush.
* :meth:`LifetimeService.warn` (the scheduler leader): records, once per deadline, a
  warning to the owner of every instance whose deadline is within its warning window
  (email + audit event; the in-app banner is computed from the same rules), cancels
  warnings whose deadline moved (the owner reconnected, the lifetime was extended), and
  sends what is pending.
* :meth:`LifetimeService.expire` (the scheduler leader): deletes, through the reconciler
  (``target = DELETED``), instances past a deadline *for which a warning was recorded*;
  after a scheduler outage the warning goes out first and the deletion follows at a later
  sweep.

All decisions read the time from the injected clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator import notify
from orchestrator.db import Database, begin_write
from orchestrator.lifetime_policy import INACTIVITY, Clock, Deadline, LifetimePolicy
from orchestrator.models import (
    ExtensionRequest,
    ExtensionStatus,
    Instance,
    InstanceEvent,
    InstanceStatus,
    Notification,
    Target,
    User,
    UserRole,
    utcnow,
)

log = logging.getLogger("atrium.lifetime")

WARN = {"lifetime": "warn-lifetime", "inactivity": "warn-inactivity"}
FLUSH_CHUNK = 1000  # instances per UPDATE (a flush is one statement up to this many)


def from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


@dataclass
class Row:
    """What the sweeps need of one live instance (no relationships loaded)."""

    id: int
    uid: str
    name: str
    owner_id: int
    termination_date: dt.datetime | None
    last_seen_at: dt.datetime | None
    activated_at: dt.datetime | None
    created_at: dt.datetime
    roles: frozenset[str] = frozenset()

    def deadlines(self, policy: LifetimePolicy) -> list[Deadline]:
        return policy.deadlines(self.roles, termination_date=self.termination_date,
                                last_seen_at=self.last_seen_at,
                                activated_at=self.activated_at, created_at=self.created_at)


_ROW_COLUMNS = (Instance.id, Instance.uid, Instance.name, Instance.owner_id,
                Instance.termination_date, Instance.last_seen_at, Instance.activated_at,
                Instance.created_at)
LIVE = and_(Instance.target != Target.DELETED, Instance.status != InstanceStatus.DELETED)


@dataclass
class WarnReport:
    warned: list[tuple[str, str]] = field(default_factory=list)  # (uid, kind)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    sent: int = 0


class LifetimeService:
    """The lifetime jobs and what pages need to show deadlines.

    ``activity`` is the process's in-memory record (uid -> epoch seconds of the last use;
    ``Portal.activity``); ``on_delete(uid)`` is called after an instance was marked for
    deletion (the portal kicks the reconciler and drops its cached route).
    """

    def __init__(self, db: Database, policy: LifetimePolicy, mailer: notify.Mailer, *,
                 public_url: str = "", clock: Clock = utcnow,
                 activity: dict[str, float] | None = None,
                 on_delete: Callable[[str], None] | None = None) -> None:
        self.db = db
        self.policy = policy
        self.mailer = mailer
        self.public_url = public_url.rstrip("/")
        self.clock = clock
        self.activity: dict[str, float] = activity if activity is not None else {}
        self.on_delete = on_delete or (lambda uid: None)
        self._background: set[asyncio.Task[Any]] = set()

    def url(self, path: str) -> str:
        return f"{self.public_url}{path}"

    # --- activity ---------------------------------------------------------------------

    async def flush_activity(self) -> int:
        """Write the recorded activity (one UPDATE per :data:`FLUSH_CHUNK` instances);
        ``last_seen_at`` only moves forward, whichever replica writes. On a database error
        the batch is kept for the next flush. Returns the number of instances written."""
        if not self.activity:
            return 0
        # Swap without an await in between: events recorded meanwhile go to the next batch.
        batch = dict(self.activity)
        self.activity.clear()
        try:
            items = sorted(batch.items())
            async with self.db.session() as s:
                for start in range(0, len(items), FLUSH_CHUNK):
                    chunk = {uid: from_epoch(t) for uid, t in items[start:start + FLUSH_CHUNK]}
                    seen = case(chunk, value=Instance.uid)
                    await s.execute(
                        update(Instance)
                        .where(Instance.uid.in_(list(chunk)), Instance.deleted_at.is_(None))
                        .values(last_seen_at=case(
                            (or_(Instance.last_seen_at.is_(None), Instance.last_seen_at < seen),
                             seen), else_=Instance.last_seen_at),
                            updated_at=Instance.updated_at)  # activity is no state change
                        .execution_options(synchronize_session=False))
                await s.commit()
        except Exception:
            for uid, t in batch.items():
                if self.activity.get(uid, 0.0) < t:
                    self.activity[uid] = t
            raise
        return len(batch)

    # --- reading ----------------------------------------------------------------------

    async def _rows(self, s: AsyncSession, *conditions: Any) -> list[Row]:
        found = (await s.execute(select(*_ROW_COLUMNS).where(LIVE, *conditions))).all()
        rows = [Row(*r) for r in found]
        owners = {r.owner_id for r in rows}
        roles: dict[int, set[str]] = {}
        if owners:
            for user_id, role in (await s.execute(
                    select(UserRole.user_id, UserRole.role)
                    .where(UserRole.user_id.in_(owners)))).all():
                roles.setdefault(user_id, set()).add(str(role))
        for r in rows:
            r.roles = frozenset(roles.get(r.owner_id, ()))
        return rows

    async def _near(self, s: AsyncSession, now: dt.datetime,
                    ahead: dt.timedelta = dt.timedelta(0)) -> list[Row]:
        """Live instances with a deadline before ``now + ahead`` (pre-filtered in SQL with
        the shortest inactivity limit, then decided per owner's roles)."""
        near = [Instance.termination_date <= now + ahead]
        shortest = self.policy.shortest_inactivity()
        if shortest is not None:
            since = func.coalesce(Instance.last_seen_at, Instance.activated_at,
                                  Instance.created_at)
            near.append(since <= now + ahead - shortest)
        return await self._rows(s, or_(*near))

    async def _warnings(self, s: AsyncSession, instance_ids: Sequence[int]
                        ) -> dict[tuple[int, str, dt.datetime], Notification]:
        if not instance_ids:
            return {}
        found = await s.scalars(select(Notification).where(
            Notification.instance_id.in_(instance_ids),
            Notification.kind.in_(list(WARN.values()))))
        return {(n.instance_id, n.kind, n.deadline): n for n in found
                if n.instance_id is not None and n.deadline is not None}

    # --- warnings ---------------------------------------------------------------------

    async def warn(self) -> WarnReport:
        """Record due warnings, cancel outdated ones, send what is pending.

        Set-based: the instances near a deadline and their recorded warnings are read in a
        few queries; statements per instance are spent only on warnings not yet recorded.
        """
        now = self.clock()
        report = WarnReport()
        async with self.db.session() as s:
            rows = await self._near(s, now, max(self.policy.lifetime_warning,
                                                self.policy.inactivity_warning))
            recorded = await self._warnings(s, [r.id for r in rows])
            due = [(row, d) for row in rows for d in row.deadlines(self.policy)
                   if d.warning_due(now) and (row.id, WARN[d.kind], d.at) not in recorded]
            owners = {u.id: u for u in (await s.scalars(
                select(User).where(User.id.in_({r.owner_id for r, _ in due})))).all()} \
                if due else {}
            for row, deadline in due:
                if await self._warn(s, row, owners[row.owner_id], deadline, now):
                    report.warned.append((row.uid, deadline.kind))
            await self._cancel_outdated(s, now, report)
            await s.commit()
        report.sent = await self.deliver()
        if report.warned or report.cancelled:
            log.info("warnings: %s", report)
        return report

    async def _warn(self, s: AsyncSession, row: Row, owner: User, deadline: Deadline,
                    now: dt.datetime) -> bool:
        limit = self.policy.inactivity_limit(row.roles)
        context = dict(name=row.name, owner=owner.label, at=deadline.at,
                       overdue=deadline.passed(now), url=self.url(f"/instances/{row.uid}"),
                       since=row.last_seen_at or row.activated_at or row.created_at,
                       limit_days=f"{limit.total_seconds() / 86400:g}" if limit else "")
        kind = WARN[deadline.kind]
        recorded = await notify.enqueue(
            s, self.mailer, key=f"{kind}:{row.id}:{deadline.at.isoformat()}", kind=kind,
            template=kind.replace("-", "_"), context=context, now=now, user=owner,
            instance_id=row.id, deadline=deadline.at)
        if recorded:
            s.add(InstanceEvent(instance_id=row.id, kind=kind, created_at=now,
                                detail=f"owner warned: deletion on "
                                       f"{deadline.at:%Y-%m-%d %H:%M} UTC ({deadline.kind})"))
        return recorded

    async def _cancel_outdated(self, s: AsyncSession, now: dt.datetime,
                               report: WarnReport) -> None:
        """Warnings whose deadline no longer holds: the deletion they announced is off.

        SQL picks the candidates - lifetime warnings whose termination date changed,
        inactivity warnings of instances used since about the time of the warning (a day
        of margin covers activity flushed late) - and each is decided exactly below. An
        inactivity limit changed by a role change alone is not a candidate: that warning
        stays, but expiry only acts on a warning of the current deadline, so the owner is
        warned again before anything is deleted.
        """
        since = func.coalesce(Instance.last_seen_at, Instance.activated_at,
                              Instance.created_at)
        pending = (await s.scalars(
            select(Notification).join(Instance, Instance.id == Notification.instance_id)
            .where(LIVE, Notification.cancelled_at.is_(None), or_(
                and_(Notification.kind == WARN["lifetime"],
                     or_(Instance.termination_date.is_(None),
                         Instance.termination_date != Notification.deadline)),
                and_(Notification.kind == WARN["inactivity"],
                     since > Notification.created_at - dt.timedelta(days=1))))
        )).all()
        if not pending:
            return
        rows = {r.id: r for r in await self._rows(
            s, Instance.id.in_({n.instance_id for n in pending}))}
        for note in pending:
            row = rows.get(note.instance_id or 0)
            if row is None:
                continue
            current = {d.kind: d.at for d in row.deadlines(self.policy)}
            kind = note.kind.removeprefix("warn-")
            if current.get(kind) == note.deadline:
                continue
            note.cancelled_at = now
            why = ("used again since the warning" if kind == INACTIVITY else
                   "its termination date changed")
            s.add(InstanceEvent(instance_id=row.id, kind="deletion-cancelled", created_at=now,
                                detail=f"the {kind} deletion announced for "
                                       f"{note.deadline:%Y-%m-%d %H:%M} UTC is off: {why}"))
            report.cancelled.append((row.uid, kind))

    async def deliver(self) -> int:
        return await notify.deliver(self.db, self.mailer, self.clock)

    def deliver_soon(self) -> None:
        """Send pending notifications in the background (after a request or decision)."""
        task = asyncio.get_running_loop().create_task(self._deliver_quietly())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _deliver_quietly(self) -> None:
        try:
            await self.deliver()
        except Exception:
            log.exception("delivering notifications failed (retried by the next sweep)")

    # --- expiry -----------------------------------------------------------------------

    async def expire(self) -> list[str]:
        """Mark for deletion every instance past a warned deadline; returns their uids."""
        now = self.clock()
        async with self.db.session() as s:
            rows = await self._near(s, now)
            warned = await self._warnings(s, [r.id for r in rows])
        due: list[tuple[Row, Deadline]] = []
        for row in rows:
            for deadline in row.deadlines(self.policy):
                if not deadline.passed(now):
                    continue
                if (row.id, WARN[deadline.kind], deadline.at) in warned:
                    due.append((row, deadline))
                    break
                log.info("%s is past its %s deadline but its owner was not warned yet: "
                         "warning first", row.uid, deadline.kind)
        if not due:
            return []
        try:
            deleted = await self._delete(due, warned, now)
        except Exception:
            log.exception("expiring %d instances failed (retried by the next sweep)", len(due))
            return []
        for uid in deleted:
            self.on_delete(uid)
        if deleted:
            log.info("expired: %s", ", ".join(deleted))
        return deleted

    async def _delete(self, due: list[tuple[Row, Deadline]],
                      warned: dict[tuple[int, str, dt.datetime], Notification],
                      now: dt.datetime) -> list[str]:
        """Mark ``due`` for deletion in one transaction, deciding again on the locked
        rows (activity flushed or an extension accepted since the first read wins)."""
        wanted = {row.id: deadline for row, deadline in due}
        async with self.db.session() as s:
            await begin_write(s)
            locked = set((await s.scalars(
                select(Instance.id).where(Instance.id.in_(list(wanted)),
                                          Instance.target != Target.DELETED)
                .with_for_update(of=Instance))).all())
            rows = {r.id: r for r in await self._rows(s, Instance.id.in_(locked))} \
                if locked else {}
            still = [(rows[i], d) for i, d in wanted.items() if i in rows and any(
                c.kind == d.kind and c.at == d.at and c.passed(now)
                for c in rows[i].deadlines(self.policy))]
            if not still:
                return []
            ids = [row.id for row, _ in still]
            await s.execute(update(Instance).where(Instance.id.in_(ids))
                            .values(target=Target.DELETED)
                            .execution_options(synchronize_session=False))
            await s.execute(update(ExtensionRequest).where(
                ExtensionRequest.instance_id.in_(ids),
                ExtensionRequest.status == ExtensionStatus.PENDING).values(
                status=ExtensionStatus.CANCELLED, decided_at=now,
                comment="the instance was deleted before a decision"))
            owners = {u.id: u for u in (await s.scalars(
                select(User).where(User.id.in_({row.owner_id for row, _ in still})))).all()}
            for row, deadline in still:
                since = row.last_seen_at or row.activated_at or row.created_at
                why = ("lifetime ended" if deadline.kind == "lifetime" else
                       f"unused since {since:%Y-%m-%d %H:%M} UTC")
                s.add(InstanceEvent(instance_id=row.id, kind="expired", created_at=now,
                                    detail=f"deleted by Atrium: {why} (deadline "
                                           f"{deadline.at:%Y-%m-%d %H:%M} UTC)"))
                owner = owners.get(row.owner_id)
                warning = warned[(row.id, WARN[deadline.kind], deadline.at)]
                await notify.enqueue(
                    s, self.mailer, key=f"deleted:{row.id}", kind="deleted",
                    template="deleted", now=now, user=owner, instance_id=row.id,
                    deadline=deadline.at,
                    context=dict(name=row.name, owner=owner.label if owner else "",
                                 kind=deadline.kind, at=deadline.at,
                                 warned_at=warning.created_at, since=since,
                                 portal=self.url("/")))
            await s.commit()
        return [row.uid for row, _ in still]

    # --- what pages show --------------------------------------------------------------

    def deadlines_of(self, instance: Instance) -> list[Deadline]:
        return self.policy.deadlines(
            instance.owner.role_names, termination_date=instance.termination_date,
            last_seen_at=instance.last_seen_at, activated_at=instance.activated_at,
            created_at=instance.created_at)

    def banner_of(self, instance: Instance) -> Deadline | None:
        """The deadline to warn about in-app now (the soonest whose window has begun)."""
        if instance.target is Target.DELETED or instance.status is InstanceStatus.DELETED:
            return None
        now = self.clock()
        return next((d for d in self.deadlines_of(instance) if d.warning_due(now)), None)

    async def upcoming(self, s: AsyncSession, within: dt.timedelta
                       ) -> list[tuple[Row, Deadline]]:
        """Live instances with a deadline within ``within``, soonest first (admins)."""
        now = self.clock()
        found = []
        for row in await self._near(s, now, within):
            soonest = next((d for d in row.deadlines(self.policy) if d.at <= now + within),
                           None)
            if soonest is not None:
                found.append((row, soonest))
        return sorted(found, key=lambda item: item[1].at)

"""The in-process half of the scale benchmark: a reconcile pass and the lifetime sweeps.

Timed against the seeded database with SQL statements counted (SQLAlchemy's
``before_cursor_execute``), after the portal was stopped, so nothing else runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from benchmarks.scale_seed import add_instances, connect
from orchestrator.db import Database
from orchestrator.lifetime import LifetimeService
from orchestrator.lifetime_policy import LifetimePolicy
from orchestrator.models import utcnow
from orchestrator.notify import Mailer
from orchestrator.reconciler import Reconciler
from orchestrator.settings import Settings, normalise_database_url
from spawners.base import ResourceState
from spawners.fake import FakeBackend

Row = tuple[str, float, int, str]


class Counter:
    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


async def timed(counter: Counter, step: Callable[[], Awaitable[Any]]) -> tuple[float, int, Any]:
    before = counter.count
    started = time.perf_counter()
    result = await step()
    return time.perf_counter() - started, counter.count - before, result


async def reconcile_pass(db: Database, counter: Counter) -> Row:
    """Every live instance ACTIVE and running on the fake backend: a pass with nothing to do
    (the steady state the periodic sweep meets almost always)."""
    async with db.session() as s:
        await s.execute(text(
            "UPDATE instances SET status = 'ACTIVE', target = 'RUNNING', backend = 'fake', "
            "ready_protocols = '[\"jupyter\"]', updated_at = now() - interval '1 hour' "
            "WHERE status != 'DELETED'"))
        uids = (await s.execute(text("SELECT uid FROM instances WHERE status != 'DELETED'"))
                ).scalars().all()
        await s.commit()
    fake = FakeBackend("scale")
    fake.resources = {uid: (ResourceState.RUNNING, ("jupyter",)) for uid in uids}
    reconciler = Reconciler(db, {"fake": fake})
    runs = [await timed(counter, reconciler.reconcile_all) for _ in range(3)]
    seconds = sorted(r[0] for r in runs)[1]
    kicked = runs[-1][2].kicked
    return (f"reconcile pass, {len(uids):,} live instances", seconds, runs[-1][1],
            f"(median of 3; {kicked} kicked)")


async def lifetime_sweeps(db: Database, counter: Counter, url: str, due: int) -> list[Row]:
    settings = Settings(state_dir=Path("/nonexistent"), database_url=url)
    service = LifetimeService(db, LifetimePolicy.from_settings(settings), Mailer(settings))
    async with db.session() as s:
        live = (await s.execute(text(
            "SELECT count(*) FROM instances WHERE status != 'DELETED' "
            "AND target != 'DELETED'"))).scalar_one()
        # Quiet: ends 3-17 days ahead, used in the last two days (nothing due).
        await s.execute(text(
            "UPDATE instances SET termination_date = now() at time zone 'utc' "
            "+ interval '3 days' + (id % 14) * interval '1 day', "
            "last_seen_at = now() at time zone 'utc' - (id % 48) * interval '1 hour'"))
        await s.commit()
    rows: list[Row] = []
    seconds, statements, _ = await timed(counter, service.warn)
    rows.append((f"warning sweep, {live:,} live, none due", seconds, statements, ""))
    seconds, statements, _ = await timed(counter, service.expire)
    rows.append((f"expiry sweep, {live:,} live, none due", seconds, statements, ""))
    async with db.session() as s:
        await s.execute(text(
            "UPDATE instances SET termination_date = now() at time zone 'utc' "
            "+ interval '1 day' WHERE id IN (SELECT id FROM instances "
            f"WHERE status != 'DELETED' ORDER BY id LIMIT {due})"))
        await s.commit()
    seconds, statements, report = await timed(counter, service.warn)
    rows.append((f"warning sweep, {len(report.warned)} newly due", seconds, statements, ""))
    seconds, statements, _ = await timed(counter, service.warn)
    rows.append(("warning sweep again, nothing new", seconds, statements, ""))
    later = utcnow() + dt.timedelta(days=1, minutes=5)
    service.clock = lambda: later
    seconds, statements, deleted = await timed(counter, service.expire)
    rows.append((f"expiry sweep, {len(deleted)} past their deadline", seconds, statements,
                 ""))
    return rows


async def run(url: str, args: argparse.Namespace, plan: int) -> list[Row]:
    db = Database(normalise_database_url(url))
    counter = Counter(db)
    try:
        rows = [await reconcile_pass(db, counter)]
        with connect(url) as conn:
            found = conn.execute("SELECT count(*) FROM instances").fetchone()
        existing = int(found[0]) if found else 0
        more = args.sweep_instances - existing
        if more > 0:
            started = time.monotonic()
            add_instances(url, first=existing + 1, count=more, users=args.users,
                          experiments=max(10, args.users // 10), plan=plan)
            print(f"added {more:,} instances for the sweeps in "
                  f"{time.monotonic() - started:.1f} s", flush=True)
        rows += await lifetime_sweeps(db, counter, url, due=200)
        return rows
    finally:
        await db.close()

"""Accounting from the audit trail over a scripted timeline (injectable clock), checked
against hours computed by hand; the CSV export and `atrium usage --csv` agree."""

from __future__ import annotations

import csv
import datetime as dt
import io
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator.db import Database
from orchestrator.models import (
    Experiment,
    Instance,
    InstanceEvent,
    InstanceStatus,
    Target,
    User,
    utcnow,
)
from orchestrator.settings import normalise_database_url
from quotas.accounting import Interval, account, clip, running_intervals
from tests.conftest import ROOT, Databases
from tests.quota_helpers import plan_on, seeded

# A timeline in the past (so `until` never has to wait for the real clock).
T0 = utcnow().replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=30)
NOW = T0 + dt.timedelta(hours=10)


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


# instance -> (owner, flavour, experiments, created, deleted, [(hours, event kind)])
TIMELINE: dict[str, tuple[str, str, list[str], float, float | None, list[tuple[float, str]]]] = {
    # 2 vCPU, 8 GiB: runs 1-3 h (a reboot in between changes nothing), again from 5 h on
    "a": ("alice", "medium", ["20261001"], 0, None, [
        (0, "launched"), (1, "active"), (2, "rebooting"), (2.1, "active"), (3, "stopped"),
        (4.9, "start"), (5, "active")]),
    # 4 vCPU, 16 GiB, 1 GPU, two experiments (LOKI, DREAM): 0.5-2.5 h, error, 4-6 h
    "b": ("alice", "large-gpu", ["20261001", "20261002"], 0, 6, [
        (0.5, "active"), (2.5, "error"), (4, "active"), (6, "deleted")]),
    # 1 vCPU, 2 GiB: a failed start, then 2-2.5 h; deleted while stopped
    "c": ("bob", "small", ["20261003"], 0.5, 8, [
        (1, "error"), (2, "active"), (2.5, "stopped"), (8, "deleted")]),
    # no experiment: from 9 h, still running at "now" (10 h)
    "d": ("carol", "small", [], 8.5, None, [(9, "active")]),
}


@pytest.fixture
async def db(databases: Databases, tmp_path: Path) -> AsyncIterator[Database]:
    database = await seeded(normalise_database_url(databases.new()), tmp_path / "data")
    async with database.session() as s:
        users = {u.username: u for u in (await s.scalars(select(User))).all()}
        experiments = {e.proposal: e for e in (await s.scalars(select(Experiment))).all()}
        for uid, (owner, flavour, proposals, created, deleted, events) in TIMELINE.items():
            instance = Instance(
                uid=f"acct{uid}", name=uid, owner=users[owner], plan_id=await plan_on(
                    database, flavour), backend="local", created_at=at(created),
                status=InstanceStatus.DELETED if deleted else InstanceStatus.ACTIVE,
                target=Target.DELETED if deleted else Target.RUNNING,
                deleted_at=at(deleted) if deleted is not None else None,
                experiments=[experiments[p] for p in proposals])
            s.add(instance)
            await s.flush()
            for hours, kind in events:
                s.add(InstanceEvent(instance_id=instance.id, kind=kind, created_at=at(hours)))
        await s.commit()
    yield database
    await database.close()


def totals(report: object, dimension: str) -> dict[str, tuple[float, ...]]:
    rows = report.rows(dimension)  # type: ignore[attr-defined]
    return {name: (round(t.hours, 6), round(t.vcpu_hours, 6), round(t.gpu_hours, 6),
                   round(t.memory_gib_hours, 6)) for name, t in rows}


async def test_whole_timeline_matches_the_hand_computed_hours(db: Database) -> None:
    async with db.session() as s:
        report = await account(s, now=lambda: NOW)
    # a: 2 h + 5 h = 7 h at 2 vCPU / 8 GiB;  b: 2 h + 2 h = 4 h at 4 vCPU / 1 GPU / 16 GiB
    assert totals(report, "user") == {
        "alice": (11, 7 * 2 + 4 * 4, 4, 7 * 8 + 4 * 16),
        "carol": (1, 1, 0, 2),  # d: 9 h -> now (10 h)
        "bob": (0.5, 0.5, 0, 1),  # c: 2 h -> 2.5 h
    }
    # b is split between its two experiments: 2 h each
    assert totals(report, "experiment") == {
        "20261001": (7 + 2, 14 + 8, 2, 56 + 32),
        "20261002": (2, 8, 2, 32),
        "(none)": (1, 1, 0, 2),
        "20261003": (0.5, 0.5, 0, 1),
    }
    assert totals(report, "instrument") == {
        "LOKI": (9, 22, 2, 88), "DREAM": (2.5, 8.5, 2, 33), "(none)": (1, 1, 0, 2)}
    assert {n: len(t.instances) for n, t in report.rows("user")} == \
        {"alice": 2, "bob": 1, "carol": 1}
    total = report.total()
    assert round(total.hours, 6) == 12.5 and len(total.instances) == 4


async def test_a_window_counts_only_what_ran_inside_it(db: Database) -> None:
    async with db.session() as s:
        report = await account(s, since=at(2), until=at(6), now=lambda: NOW)
    # a: 2-3 h and 5-6 h;  b: 2-2.5 h and 4-6 h;  c: 2-2.5 h;  d: not yet running
    assert totals(report, "user") == {
        "alice": (4.5, 2 * 2 + 2.5 * 4, 2.5, 2 * 8 + 2.5 * 16), "bob": (0.5, 0.5, 0, 1)}
    # until is never past "now": later hours have not happened yet
    async with db.session() as s:
        later = await account(s, since=at(9), until=at(100), now=lambda: NOW)
    assert later.until == NOW
    assert totals(later, "user") == {"alice": (1, 2, 0, 8), "carol": (1, 1, 0, 2)}


async def test_csv_export_and_the_cli_agree(db: Database, databases: Databases,
                                            tmp_path: Path) -> None:
    async with db.session() as s:
        report = await account(s, since=at(2), until=at(6), now=lambda: NOW)
    rows = list(csv.DictReader(io.StringIO(report.csv())))
    assert {(r["dimension"], r["name"]): r["instance_hours"] for r in rows} == {
        ("user", "alice"): "4.5000", ("user", "bob"): "0.5000",
        ("experiment", "20261001"): "3.2500", ("experiment", "20261002"): "1.2500",
        ("experiment", "20261003"): "0.5000",
        ("instrument", "LOKI"): "3.2500", ("instrument", "DREAM"): "1.7500"}
    alice = next(r for r in rows if r["name"] == "alice")
    assert (alice["vcpu_hours"], alice["gpu_hours"], alice["instances"]) == \
        ("14.0000", "2.5000", "2")
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "usage", "--csv", "--since",
         at(2).isoformat(), "--until", at(6).isoformat()],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "ATRIUM_STATE_DIR": str(tmp_path),
             "ATRIUM_DATABASE_URL": db.url})
    assert result.returncode == 0, result.stderr
    assert result.stdout == report.csv()


def test_running_intervals_from_events() -> None:
    events = [(at(0), "launched"), (at(1), "active"), (at(1.5), "active"),
              (at(2), "stopped"), (at(2.5), "stopped"), (at(3), "error"),
              (at(4), "partially-active"), (at(5), "deleted")]
    assert running_intervals(events, now=at(10)) == [Interval(at(1), at(2)),
                                                     Interval(at(4), at(5))]
    assert running_intervals([(at(1), "active")], now=at(3)) == [Interval(at(1), at(3))]
    assert running_intervals([(at(1), "error")], now=at(3)) == []
    assert clip([Interval(at(1), at(5))], at(2), at(3)) == 1.0
    assert clip([Interval(at(1), at(5))], None, at(10)) == 4.0
    assert clip([Interval(at(1), at(2))], at(3), at(4)) == 0.0

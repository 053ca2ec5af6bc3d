"""Accounting: instance-hours (and vCPU-, GPU-, memory-hours) from the audit trail.

The reconciler records what it sees as ``InstanceEvent`` rows. An instance is *running*
(and consuming its flavour) from an ``active`` (or ``partially-active``) event until the
next ``stopped``, ``deleted`` or ``error`` event; a second ``active`` while running (after a
reboot) changes nothing. A running instance with no end yet runs until "now" - given by an
injectable clock, so tests can script a timeline. Only the part of each interval inside
the report's window [since, until) counts.

Totals are kept per user (the owner), per experiment and per instrument. An instance with
several experiments' data is split evenly between them, so every breakdown adds up to the
same total; instances without experiments are counted under ``(none)``.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.errors import RequestError
from orchestrator.models import (
    Experiment,
    Flavour,
    Instance,
    InstanceEvent,
    InstanceExperiment,
    Instrument,
    Plan,
    User,
    utcnow,
)

STARTS = frozenset({"active", "partially-active"})
ENDS = frozenset({"stopped", "deleted", "error"})
NONE = "(none)"
DIMENSIONS = ("user", "experiment", "instrument")

Clock = Callable[[], dt.datetime]


def parse_time(value: str | None, what: str) -> dt.datetime | None:
    """``2026-11-01`` or ``2026-11-01T12:00[+01:00]`` -> naive UTC (as stored); empty: None.
    A malformed value is a 400 naming ``what``."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(f"{what} {value!r}: expected a date (YYYY-MM-DD) or "
                           "YYYY-MM-DDTHH:MM") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


@dataclass(frozen=True)
class Interval:
    start: dt.datetime
    end: dt.datetime

    @property
    def hours(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) / 3600


def running_intervals(events: Iterable[tuple[dt.datetime, str]], *, now: dt.datetime
                      ) -> list[Interval]:
    """The intervals in which an instance ran, from its events in the order they happened
    (other kinds are ignored); one still running ends at ``now``."""
    out: list[Interval] = []
    started: dt.datetime | None = None
    for at, kind in events:
        if kind in STARTS and started is None:
            started = at
        elif kind in ENDS and started is not None:
            out.append(Interval(started, at))
            started = None
    if started is not None and started < now:
        out.append(Interval(started, now))
    return out


def clip(intervals: Iterable[Interval], since: dt.datetime | None, until: dt.datetime
         ) -> float:
    """Hours of ``intervals`` inside [since, until)."""
    total = 0.0
    for i in intervals:
        start = max(i.start, since) if since else i.start
        end = min(i.end, until)
        if end > start:
            total += (end - start).total_seconds() / 3600
    return total


@dataclass
class Totals:
    instances: set[str] = field(default_factory=set)
    hours: float = 0.0
    vcpu_hours: float = 0.0
    gpu_hours: float = 0.0
    memory_gib_hours: float = 0.0

    def add(self, uid: str, hours: float, cpus: float, gpus: int, memory_mb: int) -> None:
        self.instances.add(uid)
        self.hours += hours
        self.vcpu_hours += hours * cpus
        self.gpu_hours += hours * gpus
        self.memory_gib_hours += hours * memory_mb / 1024


@dataclass
class UsageReport:
    since: dt.datetime | None
    until: dt.datetime
    by: dict[str, dict[str, Totals]] = field(
        default_factory=lambda: {d: {} for d in DIMENSIONS})

    def add(self, dimension: str, key: str, *args: object) -> None:
        self.by[dimension].setdefault(key, Totals()).add(*args)  # type: ignore[arg-type]

    def rows(self, dimension: str) -> list[tuple[str, Totals]]:
        """One dimension's totals, largest instance-hours first."""
        return sorted(self.by[dimension].items(), key=lambda kv: (-kv[1].hours, kv[0]))

    def total(self) -> Totals:
        out = Totals()
        for t in self.by["user"].values():
            out.instances |= t.instances
            out.hours += t.hours
            out.vcpu_hours += t.vcpu_hours
            out.gpu_hours += t.gpu_hours
            out.memory_gib_hours += t.memory_gib_hours
        return out

    def csv(self) -> str:
        """``dimension,name,instances,instance_hours,vcpu_hours,gpu_hours,memory_gib_hours``,
        one row per user, experiment and instrument."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["dimension", "name", "instances", "instance_hours", "vcpu_hours",
                         "gpu_hours", "memory_gib_hours", "since", "until"])
        since = self.since.isoformat() if self.since else ""
        for dimension in DIMENSIONS:
            for name, t in self.rows(dimension):
                writer.writerow([dimension, name, len(t.instances), f"{t.hours:.4f}",
                                 f"{t.vcpu_hours:.4f}", f"{t.gpu_hours:.4f}",
                                 f"{t.memory_gib_hours:.4f}", since, self.until.isoformat()])
        return out.getvalue()


CHUNK = 2000  # instances per events query; the event loop runs other work in between


async def account(session: AsyncSession, *, since: dt.datetime | None = None,
                  until: dt.datetime | None = None, now: Clock = utcnow) -> UsageReport:
    """Usage in [since, until) (``until`` defaults to, and never goes past, ``now()``).

    Times are naive UTC, as stored. The window may hold every instance ever created, so it
    reads plain columns (no ORM objects) and the events a chunk of instances at a time,
    yielding to the event loop between chunks: a report never stalls the proxy.
    """
    current = now()
    until = min(until or current, current)
    report = UsageReport(since=since, until=until)
    window = [Instance.created_at < until]
    if since is not None:
        window.append(Instance.deleted_at.is_(None) | (Instance.deleted_at >= since))
    sizes = {row[0]: tuple(row[1:]) for row in await session.execute(
        select(Instance.id, Instance.uid, User.username, Flavour.cpus, Flavour.gpus,
               Flavour.memory_mb)
        .join(User, User.id == Instance.owner_id).join(Plan, Plan.id == Instance.plan_id)
        .join(Flavour, Flavour.id == Plan.flavour_id).where(*window))}
    if not sizes:
        return report
    experiments: dict[int, list[tuple[str, str]]] = {}
    for instance_id, proposal, instrument in await session.execute(
            select(InstanceExperiment.instance_id, Experiment.proposal, Instrument.name)
            .join(Experiment, Experiment.id == InstanceExperiment.experiment_id)
            .outerjoin(Instrument, Instrument.id == Experiment.instrument_id)
            .join(Instance, Instance.id == InstanceExperiment.instance_id).where(*window)):
        experiments.setdefault(instance_id, []).append((proposal, instrument or NONE))
    ids = sorted(sizes)
    for start in range(0, len(ids), CHUNK):
        await asyncio.sleep(0)  # let requests in between chunks
        lo, hi = ids[start], ids[min(start + CHUNK, len(ids)) - 1]
        events: dict[int, list[tuple[dt.datetime, str]]] = {}
        for instance_id, at, kind in await session.execute(
                select(InstanceEvent.instance_id, InstanceEvent.created_at, InstanceEvent.kind)
                .where(InstanceEvent.instance_id.between(lo, hi),
                       InstanceEvent.kind.in_(STARTS | ENDS), InstanceEvent.created_at < until)
                .order_by(InstanceEvent.instance_id, InstanceEvent.created_at,
                          InstanceEvent.id)):
            if instance_id in sizes:
                events.setdefault(instance_id, []).append((at, kind))
        for instance_id, happened in events.items():
            _add(report, sizes[instance_id], experiments.get(instance_id, []),
                 clip(running_intervals(happened, now=until), since, until))
    return report


def _add(report: UsageReport, size: tuple[object, ...], experiments: list[tuple[str, str]],
         hours: float) -> None:
    if hours <= 0:
        return
    uid, owner, cpus, gpus, memory_mb = size
    args = (uid, cpus, gpus, memory_mb)
    report.add("user", str(owner), uid, hours, *args[1:])
    shares = experiments or [(NONE, NONE)]
    share = hours / len(shares)
    for proposal, instrument in shares:
        report.add("experiment", proposal, uid, share, *args[1:])
        report.add("instrument", instrument, uid, share, *args[1:])

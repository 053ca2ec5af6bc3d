"""The experiment catalogue: experiments, their members and data, synced from the outside.

Sources, all reduced to :class:`ExperimentRecord` rows:

* a YAML file (``users``, ``instruments``, ``experiments`` with ``members``);
* a CSV file, one row per experiment member, columns
  ``proposal,title,instrument,start_date,end_date,data_path,username[,email,name]``;
* a SQL database (a facility's user office), given by URL and a query returning the same
  columns as the CSV (default query: :data:`DEFAULT_QUERY`).

A sync makes Atrium's copy match the source for the experiments the source lists: titles,
dates, data paths and member sets; users named there are created when missing. Experiments
absent from the source are left alone (sources may be partial, e.g. one cycle at a time).
Relative data paths are taken relative to ``data_root``.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy
import yaml
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db import Database
from orchestrator.errors import RequestError
from orchestrator.models import (
    Experiment,
    ExperimentMember,
    Instrument,
    Role,
    User,
    UserRole,
    utcnow,
)
from orchestrator.settings import Settings
from sharing.models import InstrumentScientist

log = logging.getLogger("atrium.sync")

DEFAULT_QUERY = (
    "SELECT proposal, title, instrument, start_date, end_date, data_path, username, email, name "
    "FROM experiment_members"
)


@dataclass
class ExperimentRecord:
    proposal: str
    title: str = ""
    instrument: str = ""
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    data_path: str = ""
    members: set[str] = field(default_factory=set)


@dataclass
class UserRecord:
    username: str
    email: str = ""
    name: str = ""
    roles: tuple[str, ...] | None = None  # None: leave roles as they are
    scientist_of: tuple[str, ...] | None = None  # instruments; None: leave as they are


@dataclass
class SyncReport:
    experiments_created: int = 0
    experiments_updated: int = 0
    users_created: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0

    def __str__(self) -> str:
        return (f"{self.experiments_created} experiments created, {self.experiments_updated} "
                f"updated, {self.users_created} users created, {self.memberships_added} "
                f"memberships added, {self.memberships_removed} removed")


def _date(value: Any, where: str) -> dt.date | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise RequestError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from None


def _resolve(path: str, data_root: Path | None) -> str:
    if not path or Path(path).is_absolute() or data_root is None:
        return path
    return str((data_root / path).resolve())


def parse_yaml(text: str, source: str, data_root: Path | None
               ) -> tuple[list[ExperimentRecord], list[UserRecord]]:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise RequestError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise RequestError(f"{source}: expected a mapping with 'experiments'")
    users = []
    for n, u in enumerate(doc.get("users") or [], 1):
        if not isinstance(u, dict) or not u.get("username"):
            raise RequestError(f"{source}: users[{n}] needs a username")
        roles = u.get("roles")
        bad = [r for r in roles or [] if r not in Role.__members__]
        if bad:
            raise RequestError(f"{source}: users[{n}]: unknown role(s) {', '.join(bad)}")
        scientist_of = u.get("scientist_of")
        users.append(UserRecord(str(u["username"]), str(u.get("email", "")),
                                str(u.get("name", "")),
                                tuple(roles) if roles is not None else None,
                                tuple(map(str, scientist_of)) if scientist_of is not None
                                else None))
    records = []
    for n, e in enumerate(doc.get("experiments") or [], 1):
        where = f"{source}: experiments[{n}]"
        if not isinstance(e, dict) or not e.get("proposal"):
            raise RequestError(f"{where} needs a proposal")
        records.append(ExperimentRecord(
            proposal=str(e["proposal"]), title=str(e.get("title", "")),
            instrument=str(e.get("instrument", "") or ""),
            start_date=_date(e.get("start_date"), where), end_date=_date(e.get("end_date"), where),
            data_path=_resolve(str(e.get("data_path", "") or ""), data_root),
            members={str(m) for m in e.get("members") or []}))
    return records, users


def parse_rows(rows: list[dict[str, Any]], source: str, data_root: Path | None
               ) -> tuple[list[ExperimentRecord], list[UserRecord]]:
    """Rows of one experiment member each (CSV, SQL) grouped into experiments."""
    by_proposal: dict[str, ExperimentRecord] = {}
    users: dict[str, UserRecord] = {}
    for n, row in enumerate(rows, 1):
        where = f"{source}: row {n}"
        proposal = str(row.get("proposal") or "").strip()
        if not proposal:
            raise RequestError(f"{where}: no proposal")
        record = by_proposal.setdefault(proposal, ExperimentRecord(
            proposal=proposal, title=str(row.get("title") or ""),
            instrument=str(row.get("instrument") or ""),
            start_date=_date(row.get("start_date"), where),
            end_date=_date(row.get("end_date"), where),
            data_path=_resolve(str(row.get("data_path") or ""), data_root)))
        username = str(row.get("username") or "").strip()
        if username:
            record.members.add(username)
            users.setdefault(username, UserRecord(username, str(row.get("email") or ""),
                                                  str(row.get("name") or "")))
    return list(by_proposal.values()), list(users.values())


def read_file(path: Path, data_root: Path | None = None
              ) -> tuple[list[ExperimentRecord], list[UserRecord]]:
    if not path.is_file():
        raise RequestError(f"{path}: no such file")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            return parse_rows(list(csv.DictReader(fh)), str(path), data_root)
    return parse_yaml(path.read_text(), str(path), data_root)


def read_sql(url: str, query: str, data_root: Path | None = None
             ) -> tuple[list[ExperimentRecord], list[UserRecord]]:
    """Blocking: reads the user-office database (run it in a thread)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sqlalchemy.text(query or DEFAULT_QUERY))]
    finally:
        engine.dispose()
    return parse_rows(rows, "user-office database", data_root)


async def apply(session: AsyncSession, records: list[ExperimentRecord],
                users: list[UserRecord]) -> SyncReport:
    """Make the database match the records (see the module docstring); commit is the caller's."""
    report = SyncReport()
    wanted_users = {u.username: u for u in users}
    for r in records:
        for m in r.members:
            wanted_users.setdefault(m, UserRecord(m))
    existing_users = {u.username: u for u in (await session.scalars(
        select(User).where(User.username.in_(list(wanted_users))))).all()} if wanted_users else {}
    for name, rec in wanted_users.items():
        user = existing_users.get(name)
        if user is None:
            user = User(username=name, email=rec.email, display_name=rec.name)
            session.add(user)
            existing_users[name] = user
            report.users_created += 1
        else:
            user.email = rec.email or user.email
            user.display_name = rec.name or user.display_name
        if rec.roles is not None:
            user.roles = [UserRole(role=Role(r)) for r in dict.fromkeys(rec.roles)]
    instruments = {i.name: i for i in (await session.scalars(select(Instrument))).all()}
    named = [r.instrument for r in records if r.instrument] + [
        i for u in wanted_users.values() for i in u.scientist_of or ()]
    for name in named:
        if name not in instruments:
            instruments[name] = Instrument(name=name)
            session.add(instruments[name])
    await session.flush()
    for rec in wanted_users.values():
        if rec.scientist_of is not None:
            user = existing_users[rec.username]
            await session.execute(delete(InstrumentScientist).where(
                InstrumentScientist.user_id == user.id))
            for name in dict.fromkeys(rec.scientist_of):
                session.add(InstrumentScientist(user_id=user.id,
                                                instrument_id=instruments[name].id))
    proposals = [r.proposal for r in records]
    experiments = {e.proposal: e for e in (await session.scalars(
        select(Experiment).where(Experiment.proposal.in_(proposals)))).all()} if proposals else {}
    for r in records:
        e = experiments.get(r.proposal)
        if e is None:
            e = Experiment(proposal=r.proposal)
            session.add(e)
            experiments[r.proposal] = e
            report.experiments_created += 1
        elif (e.title, e.start_date, e.end_date, e.data_path) != (
                r.title, r.start_date, r.end_date, r.data_path):
            report.experiments_updated += 1
        e.title, e.start_date, e.end_date, e.data_path = (r.title, r.start_date, r.end_date,
                                                          r.data_path)
        e.instrument_id = instruments[r.instrument].id if r.instrument else None
        e.synced_at = utcnow()
    await session.flush()
    ids = [experiments[p].id for p in proposals]
    current = {(m.experiment_id, m.user_id) for m in (await session.scalars(
        select(ExperimentMember).where(ExperimentMember.experiment_id.in_(ids)))).all()}
    wanted = {(experiments[r.proposal].id, existing_users[m].id)
              for r in records for m in r.members}
    for exp_id, user_id in wanted - current:
        session.add(ExperimentMember(experiment_id=exp_id, user_id=user_id))
    for exp_id, user_id in current - wanted:
        await session.execute(delete(ExperimentMember).where(
            ExperimentMember.experiment_id == exp_id, ExperimentMember.user_id == user_id))
    report.memberships_added = len(wanted - current)
    report.memberships_removed = len(current - wanted)
    await session.flush()
    return report


async def sync_from_settings(settings: Settings, db: Database) -> SyncReport:
    """One sync from the configured sources (file and/or SQL)."""
    records: list[ExperimentRecord] = []
    users: list[UserRecord] = []
    if settings.experiments_file:
        r, u = read_file(settings.experiments_file)
        records += r
        users += u
    if settings.experiments_sql_url:
        r, u = await asyncio.get_running_loop().run_in_executor(
            None, read_sql, settings.experiments_sql_url, settings.experiments_sql_query)
        records += r
        users += u
    async with db.session() as s:
        report = await apply(s, records, users)
        await s.commit()
    return report


async def periodic_sync(settings: Settings, db: Database) -> None:
    while True:
        try:
            log.info("experiment sync: %s", await sync_from_settings(settings, db))
        except Exception:
            log.exception("experiment sync failed")
        await asyncio.sleep(settings.experiments_sync_interval)

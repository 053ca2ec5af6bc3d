"""The experiment catalogue syncs from YAML, CSV and a user-office SQL database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator import experiments_sync
from orchestrator.db import Database
from orchestrator.errors import RequestError
from orchestrator.models import Experiment, ExperimentMember, User
from orchestrator.settings import load_settings, normalise_database_url
from tests.conftest import Databases


@pytest.fixture
async def db(databases: Databases) -> Database:
    database = Database(normalise_database_url(databases.new()))
    await database.upgrade()
    yield database
    await database.close()


async def members(db: Database) -> dict[str, set[str]]:
    async with db.session() as s:
        rows = await s.execute(
            select(Experiment.proposal, User.username)
            .join(ExperimentMember, ExperimentMember.experiment_id == Experiment.id)
            .join(User, User.id == ExperimentMember.user_id))
        out: dict[str, set[str]] = {}
        for proposal, username in rows:
            out.setdefault(proposal, set()).add(username)
        return out


CSV = """proposal,title,instrument,start_date,end_date,data_path,username,email,name
P1,Spin waves,DREAM,2026-01-02,2026-01-05,p1,ann,ann@x.org,Ann
P1,Spin waves,DREAM,2026-01-02,2026-01-05,p1,ben,,
P2,Gels,LOKI,,,/data/p2,ann,,
"""


async def test_csv_sync_creates_then_follows_changes(db: Database, tmp_path: Path) -> None:
    source = tmp_path / "office.csv"
    source.write_text(CSV)
    records, users = experiments_sync.read_file(source, tmp_path)
    async with db.session() as s:
        report = await experiments_sync.apply(s, records, users)
        await s.commit()
    assert (report.experiments_created, report.users_created, report.memberships_added) == (2, 2, 3)
    assert await members(db) == {"P1": {"ann", "ben"}, "P2": {"ann"}}
    async with db.session() as s:
        p1 = await s.scalar(select(Experiment).where(Experiment.proposal == "P1"))
        assert p1 is not None and p1.data_path == str(tmp_path / "p1")
        assert p1.instrument is not None and p1.instrument.name == "DREAM"
    # ben leaves P1, cat joins: the next sync follows; unchanged rows change nothing.
    source.write_text(CSV.replace(",ben,,", ",cat,,"))
    records, users = experiments_sync.read_file(source, tmp_path)
    async with db.session() as s:
        report = await experiments_sync.apply(s, records, users)
        await s.commit()
    assert (report.experiments_created, report.experiments_updated) == (0, 0)
    assert (report.memberships_added, report.memberships_removed) == (1, 1)
    assert await members(db) == {"P1": {"ann", "cat"}, "P2": {"ann"}}


async def test_sql_sync_from_a_user_office_database(db: Database, tmp_path: Path) -> None:
    office = tmp_path / "office.db"
    with sqlite3.connect(office) as conn:
        conn.execute("CREATE TABLE visits (prop TEXT, ttl TEXT, instr TEXT, login TEXT)")
        conn.executemany("INSERT INTO visits VALUES (?, ?, ?, ?)", [
            ("S1", "Operando batteries", "DREAM", "dora"),
            ("S1", "Operando batteries", "DREAM", "eve")])
    settings = load_settings(
        {"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1",
         "ATRIUM_EXPERIMENTS_SQL_URL": f"sqlite:///{office}",
         "ATRIUM_EXPERIMENTS_SQL_QUERY": "SELECT prop AS proposal, ttl AS title, "
                                         "instr AS instrument, login AS username FROM visits"})
    report = await experiments_sync.sync_from_settings(settings, db)
    assert report.experiments_created == 1 and report.memberships_added == 2
    assert await members(db) == {"S1": {"dora", "eve"}}


@pytest.mark.parametrize("text, words", [
    ("experiments: [{title: no proposal}]", "experiments[1] needs a proposal"),
    ("experiments: [{proposal: X, start_date: soon}]", "is not a date"),
    ("users: [{username: u, roles: [EMPEROR]}]", "unknown role(s) EMPEROR"),
    ("- just\n- a list", "expected a mapping"),
    ("experiments: [", "not valid YAML"),
])
def test_bad_catalogue_files_are_refused_with_the_place(tmp_path: Path, text: str,
                                                        words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RequestError) as err:
        experiments_sync.read_file(path)
    assert words in err.value.message and "bad.yaml" in err.value.message

"""The lifetime rules and settings, the activity filter, and the batched activity flush."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from tornado.httputil import HTTPHeaders

from orchestrator import lifecycle
from orchestrator.db import Database
from orchestrator.demo import seed
from orchestrator.lifetime import LifetimeService
from orchestrator.lifetime_policy import LifetimePolicy
from orchestrator.models import Instance, User, utcnow
from orchestrator.notify import Mailer
from orchestrator.scheduler import sync_url
from orchestrator.settings import SettingsError, load_settings
from tests.conftest import Databases
from web.activity import is_use

DAY = dt.timedelta(days=1)


def test_default_rules() -> None:
    policy = LifetimePolicy.from_settings(load_settings({"ATRIUM_DEMO_MODE": "1"}))
    assert policy.lifetime(set(), "small") == 14 * DAY
    assert policy.lifetime({"STAFF"}, "small") == 60 * DAY
    assert policy.lifetime({"GUEST", "INSTRUMENT_SCIENTIST"}, "small") == 60 * DAY
    assert policy.inactivity_limit(set()) == 4 * DAY
    assert policy.inactivity_limit({"ADMIN"}) == 8 * DAY
    assert policy.lifetime_warning == dt.timedelta(hours=48)
    assert policy.inactivity_warning == dt.timedelta(hours=24)
    assert not policy.auto_accept({"STAFF"}, 1)


def test_rules_per_role_and_flavour(tmp_path: Path) -> None:
    settings = load_settings({
        "ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_LIFETIME_DAYS": "7; staff=30",
        "ATRIUM_FLAVOUR_LIFETIME_DAYS": "gpu.large=2", "ATRIUM_INACTIVITY_DAYS": "2;STAFF=0",
        "ATRIUM_EXTENSION_AUTO_ACCEPT_DAYS": "STAFF=14", "ATRIUM_LIFETIME_WARNING_HOURS": "12"})
    policy = LifetimePolicy.from_settings(settings)
    assert policy.lifetime(set(), "small") == 7 * DAY
    assert policy.lifetime({"STAFF"}, "small") == 30 * DAY
    assert policy.lifetime({"STAFF"}, "gpu.large") == 2 * DAY  # the flavour caps
    assert policy.lifetime({"STAFF"}, "small", quota_hours=36) == dt.timedelta(hours=36)
    assert policy.inactivity_limit({"STAFF"}) is None  # 0: never for inactivity
    assert policy.auto_accept({"STAFF"}, 14) and not policy.auto_accept({"STAFF"}, 15)
    assert not policy.auto_accept(set(), 1)
    now = utcnow()
    [life] = policy.deadlines({"STAFF"}, termination_date=now + DAY, last_seen_at=None,
                              activated_at=None, created_at=now)
    assert life.kind == "lifetime" and life.warn_from == now + dt.timedelta(hours=12)
    deadlines = policy.deadlines(set(), termination_date=now + 7 * DAY, last_seen_at=now,
                                 activated_at=now - DAY, created_at=now - DAY)
    assert [(d.kind, d.at) for d in deadlines] == [("inactivity", now + 2 * DAY),
                                                   ("lifetime", now + 7 * DAY)]


@pytest.mark.parametrize("env, words", [
    ({"ATRIUM_LIFETIME_DAYS": "PIRATE=3"}, "ATRIUM_LIFETIME_DAYS: 'PIRATE=3'"),
    ({"ATRIUM_LIFETIME_DAYS": "0"}, "nothing runs forever"),
    ({"ATRIUM_INACTIVITY_DAYS": "STAFF=soon"}, "ATRIUM_INACTIVITY_DAYS"),
    ({"ATRIUM_FLAVOUR_LIFETIME_DAYS": "7"}, "flavour=days"),
    ({"ATRIUM_SMTP_PORT": "99999"}, "ATRIUM_SMTP_PORT"),
    ({"ATRIUM_LEADER_LEASE": "0.1"}, "ATRIUM_LEADER_LEASE"),
    ({"ATRIUM_SMTP_PASSWORD_FILE": "/nonexistent"}, "ATRIUM_SMTP_PASSWORD_FILE"),
])
def test_bad_lifetime_settings_name_the_variable(tmp_path: Path, env: dict[str, str],
                                                 words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        load_settings({"ATRIUM_STATE_DIR": str(tmp_path), "ATRIUM_DEMO_MODE": "1", **env})


def test_what_counts_as_use() -> None:
    assert is_use("POST", HTTPHeaders())
    assert is_use("PUT", HTTPHeaders())
    assert is_use("GET", HTTPHeaders({"Sec-Fetch-Mode": "navigate"}))
    assert is_use("GET", HTTPHeaders({"Accept": "text/html,application/xhtml+xml"}))
    assert not is_use("GET", HTTPHeaders({"Accept": "application/json"}))
    assert not is_use("HEAD", HTTPHeaders())


def test_job_store_urls() -> None:
    assert sync_url("sqlite+aiosqlite:////x/a.db") == "sqlite:////x/a.db"
    assert sync_url("postgresql+asyncpg://u@h/db") == "postgresql+psycopg://u@h/db"


async def test_activity_flush_is_one_update(databases: Databases, tmp_path: Path) -> None:
    settings = load_settings({"ATRIUM_DATABASE_URL": databases.new(), "ATRIUM_DEMO_MODE": "1",
                              "ATRIUM_STATE_DIR": str(tmp_path)})
    db = Database(settings.database_url)
    await db.upgrade()
    await seed(db, tmp_path / "demo-data")
    uids = []
    async with db.session() as s:
        alice = await s.scalar(select(User).where(User.username == "alice"))
        assert alice is not None
        plan = next(p for p in await lifecycle.plans_for(s, alice, ["local"]) if p.preset)
        for n in range(40):
            instance = await lifecycle.launch(s, alice, name=f"i{n}", plan_id=plan.id,
                                              experiment_ids=[], backends=["local"], quota=100)
            uids.append(instance.uid)
        await s.commit()
    activity: dict[str, float] = {}
    service = LifetimeService(db, LifetimePolicy(), Mailer(settings), activity=activity)
    now = utcnow().replace(microsecond=0)
    epoch = now.replace(tzinfo=dt.UTC).timestamp()
    for n, uid in enumerate(uids):
        activity[uid] = epoch + n
    activity[secrets.token_hex(6)] = epoch  # an instance that does not exist: ignored

    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    assert await service.flush_activity() == 41
    event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len([s for s in statements if s.lstrip().upper().startswith("UPDATE")]) == 1
    assert activity == {}
    async with db.session() as s:
        rows = dict((await s.execute(select(Instance.uid, Instance.last_seen_at))).all())
    assert all(rows[uid] == now + dt.timedelta(seconds=n) for n, uid in enumerate(uids))
    # Older activity (another replica's, late) never moves last_seen_at back.
    activity[uids[0]] = epoch - 3600
    await service.flush_activity()
    async with db.session() as s:
        assert await s.scalar(select(Instance.last_seen_at).where(
            Instance.uid == uids[0])) == now
    await db.close()

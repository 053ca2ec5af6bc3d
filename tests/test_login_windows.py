"""Login sessions end after the idle timeout and after their lifetime, on the scripted clock.

The portal's own :class:`web.auth.Authenticator` decides on login sessions stored in a real
database (SQLite and PostgreSQL); only its clock is scripted, so the windows are crossed
exactly, without sleeping and whatever the machine's load. (tests/oidc covers the HTTP
side: a dead login is a 401 and a redirect to the login page.)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator import logins
from orchestrator.db import Database
from orchestrator.demo import seed
from orchestrator.models import User
from orchestrator.settings import load_settings, normalise_database_url
from tests.conftest import Databases
from web.auth import Authenticator
from web.routes import PrincipalCache

LIFETIME, IDLE = 3600.0, 600.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def db(databases: Databases, tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(normalise_database_url(databases.new()))
    await database.upgrade()
    await seed(database, tmp_path / "demo-data")
    yield database
    await database.close()


async def login(db: Database, username: str) -> tuple[str, int]:
    """A demo login of ``username`` as the login page records it: (digest, user id)."""
    async with db.session() as s:
        user = await s.scalar(select(User).where(User.username == username))
        assert user is not None
        sid = await logins.create_session(s, user.id, "demo", dt.timedelta(seconds=LIFETIME))
        await s.commit()
        return logins.hash_session_id(sid), user.id


def authenticator(db: Database, clock: Clock) -> Authenticator:
    settings = load_settings({"ATRIUM_DATABASE_URL": "sqlite:///unused.db",
                              "ATRIUM_DEMO_MODE": "1",
                              "ATRIUM_SESSION_LIFETIME": str(LIFETIME),
                              "ATRIUM_SESSION_IDLE_TIMEOUT": str(IDLE)})
    return Authenticator(db, PrincipalCache(db), settings=settings, clock=clock,
                         session_ttl=0.0)


async def test_activity_keeps_a_login_past_the_idle_timeout_and_idleness_ends_it(
        db: Database) -> None:
    clock = Clock()
    auth = authenticator(db, clock)
    digest, user_id = await login(db, "bob")
    for _ in range(4):  # 4 x 590 s of use: well past one idle timeout in total
        clock.advance(IDLE - 10)
        assert await auth.session_user(digest) == user_id
    clock.advance(IDLE + 1)
    assert await auth.session_user(digest) is None


async def test_a_login_ends_after_its_lifetime_even_when_busy(db: Database) -> None:
    clock = Clock()
    auth = authenticator(db, clock)
    digest, user_id = await login(db, "carol")
    start = clock.now  # just before the login
    while clock.now - start < LIFETIME - 300:  # a request every 5 minutes
        clock.advance(300)
        assert await auth.session_user(digest) == user_id
    clock.now = start + LIFETIME + 1  # past the lifetime (from the login), however busy
    assert await auth.session_user(digest) is None


async def test_a_new_process_honours_the_activity_recorded_by_another(
        db: Database) -> None:
    """Activity is written to the database (at most every touch interval), so the idle
    window holds across replicas and restarts, not only in the process that saw it."""
    clock = Clock()
    first = authenticator(db, clock)
    digest, user_id = await login(db, "alice")
    clock.advance(IDLE - 10)
    assert await first.session_user(digest) == user_id
    await asyncio.gather(*first._background)  # the activity write it started
    clock.advance(IDLE - 10)  # 1180 s after the login, 590 s after the last request
    assert await authenticator(db, clock).session_user(digest) == user_id

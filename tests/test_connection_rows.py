"""Live connection rows (orchestrator/connections.py) on a real database: what counts as
present, the heartbeat, and the expiry of a dead process's rows. Runs on SQLite and, when
it is reachable, PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from orchestrator import connections as rows
from orchestrator.db import Database
from orchestrator.models import utcnow
from orchestrator.settings import normalise_database_url
from tests.conftest import Databases


@pytest.fixture
async def db(databases: Databases) -> AsyncIterator[Database]:
    database = Database(normalise_database_url(databases.new()))
    await database.upgrade()
    yield database
    await database.close()


async def age(db: Database, conn_id: str, seconds: float) -> None:
    """Make a row look ``seconds`` old (as if its process stopped beating then)."""
    async with db.session() as s:
        await s.execute(update(rows.LiveConnection).where(rows.LiveConnection.id == conn_id)
                        .values(last_seen_at=utcnow() - dt.timedelta(seconds=seconds)))
        await s.commit()


async def present(db: Database, uid: str) -> frozenset[int]:
    async with db.session() as s:
        return await rows.present_users(s, uid)


async def test_open_connections_count_while_their_process_beats(db: Database) -> None:
    async with db.session() as s:
        await rows.opened(s, "a/1", "u1", 7, "lab", "a")
        await rows.opened(s, "b/1", "u1", 8, "desktop", "b")
        await rows.opened(s, "b/2", "u2", 9, "lab", "b")
        await s.commit()
    assert await present(db, "u1") == {7, 8}
    # Replica b stops beating (it crashed): after EXPIRY its rows no longer count, and the
    # next heartbeat of any replica deletes them.
    await age(db, "b/1", rows.EXPIRY + 1)
    await age(db, "b/2", rows.EXPIRY + 1)
    await age(db, "a/1", rows.EXPIRY + 1)
    async with db.session() as s:
        await rows.heartbeat(s, "a", ["a/1"])  # a still holds its connection
        await s.commit()
    assert await present(db, "u1") == {7}
    async with db.session() as s:
        left = set((await s.scalars(select(rows.LiveConnection.id))).all())
    assert left == {"a/1"}


async def test_a_heartbeat_drops_the_rows_its_process_no_longer_holds(db: Database) -> None:
    async with db.session() as s:
        await rows.opened(s, "a/1", "u1", 7, "lab", "a")
        await rows.opened(s, "a/2", "u1", 8, "lab", "a")
        await rows.opened(s, "b/1", "u1", 9, "lab", "b")
        await s.commit()
        await rows.heartbeat(s, "a", ["a/2"])  # a/1 closed but its delete was lost
        await s.commit()
    assert await present(db, "u1") == {8, 9}
    async with db.session() as s:
        await rows.closed(s, "a/2")
        await rows.forget_replica(s, "b")  # b stops cleanly
        await s.commit()
    assert await present(db, "u1") == frozenset()


async def test_requests_count_for_RECENT_seconds(db: Database) -> None:
    async with db.session() as s:
        await rows.requested(s, "a", "u1", 7, utcnow())
        await rows.requested(s, "a", "u1", 7, utcnow())  # one row per user, instance, replica
        await s.commit()
    assert await present(db, "u1") == {7}
    row_id = rows.http_row_id("a", "u1", 7)
    await age(db, row_id, rows.EXPIRY + 1)  # beyond an open connection's expiry: still here
    assert await present(db, "u1") == {7}
    await age(db, row_id, rows.RECENT + 1)
    assert await present(db, "u1") == frozenset()
    async with db.session() as s:
        await rows.heartbeat(s, "a", [])
        await s.commit()
        assert (await s.scalars(select(rows.LiveConnection.id))).all() == []

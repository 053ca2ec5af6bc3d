"""Adding a member by email: a username wins, a unique email finds its user, an email
several users share is refused (409, naming the problem) instead of guessing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.db import Database
from orchestrator.errors import RequestError
from orchestrator.models import User
from orchestrator.settings import normalise_database_url
from sharing.members import find_user
from tests.conftest import Databases
from tests.quota_helpers import seeded


@pytest.fixture
async def db(databases: Databases, tmp_path: Path) -> AsyncIterator[Database]:
    database = await seeded(normalise_database_url(databases.new()), tmp_path / "data")
    async with database.session() as s:
        s.add_all([User(username="twin1", email="Shared@Example.org"),
                   User(username="twin2", email="shared@example.org"),
                   User(username="solo", email="solo@example.org"),
                   # A username that is someone else's email: the username wins.
                   User(username="solo2@example.org", email="other@example.org"),
                   User(username="impostor", email="solo2@example.org")])
        await s.commit()
    yield database
    await database.close()


async def test_ambiguous_emails_are_refused(db: Database) -> None:
    async with db.session() as s:
        assert (await find_user(s, " SOLO@example.org ")).username == "solo"
        assert (await find_user(s, "twin1")).username == "twin1"
        assert (await find_user(s, "solo2@example.org")).username == "solo2@example.org"
        with pytest.raises(RequestError) as err:
            await find_user(s, "shared@EXAMPLE.org")
        assert err.value.status == 409
        assert "several users have the email address" in err.value.message
        assert "give the username" in err.value.message
        for bad, status in (("nobody@example.org", 404), ("", 400), (7, 400),
                            ("x" * 256, 400)):
            with pytest.raises(RequestError) as err:
                await find_user(s, bad)
            assert err.value.status == status

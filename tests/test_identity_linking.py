"""Which first logins may claim an existing account (orchestrator/logins.py): only a
never-used, unlinked one, and only when the site allows it; an admin link overrides."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator import logins
from orchestrator.db import Database
from orchestrator.logins import IdentityConflict
from orchestrator.models import ApiToken, Role, User, UserIdentity, utcnow
from orchestrator.settings import normalise_database_url
from orchestrator.tokens import create_token, hash_token, user_id_for_token
from tests.conftest import Databases
from tests.quota_helpers import seeded

ISS = "https://idp.example.org"


@pytest.fixture
async def db(databases: Databases, tmp_path: Path) -> AsyncIterator[Database]:
    database = await seeded(normalise_database_url(databases.new()), tmp_path / "data")
    async with database.session() as s:
        used = await s.scalar(select(User).where(User.username == "bob"))
        assert used is not None
        used.last_login_at = utcnow()  # bob logged in before (another way)
        await s.commit()
    yield database
    await database.close()


async def first_login(db: Database, username: str, subject: str, **kw: bool) -> User:
    async with db.session() as s:
        user = await logins.upsert_user(
            s, issuer=ISS, subject=subject, username=username, email="", name="",
            groups=["g"], roles={Role.ADMIN}, managed_roles={Role.ADMIN}, **kw)
        await s.commit()
        return user


async def test_only_unused_unlinked_accounts_are_claimed(db: Database) -> None:
    # alice came from the user office and never logged in: her first login claims it.
    assert (await first_login(db, "alice", "s-alice")).username == "alice"
    # bob's account was used: refused, with the way out named.
    with pytest.raises(IdentityConflict, match=r"already exists and is not linked.*"
                       r"atrium user link bob"):
        await first_login(db, "bob", "s-bob")
    # Another subject of the same provider cannot take alice's account.
    with pytest.raises(IdentityConflict, match="linked to another identity"):
        await first_login(db, "alice", "s-mallory")
    # A site whose provider usernames are not the user office's claims nothing.
    with pytest.raises(IdentityConflict, match="already exists"):
        await first_login(db, "gina", "s-gina", link_unclaimed=False)
    async with db.session() as s:
        rows = (await s.scalars(select(UserIdentity.subject))).all()
        gina = await s.scalar(select(User).where(User.username == "gina"))
        assert gina is not None and {r.role for r in gina.roles} == set()
    assert set(rows) == {"s-alice"}  # nothing half-made by the refusals
    # The admin links bob: his login uses the account (and gets the provider's roles).
    async with db.session() as s:
        await logins.link_identity(s, "bob", ISS, "s-bob")
        await s.commit()
    bob = await first_login(db, "bob", "s-bob")
    assert bob.username == "bob" and {r.role for r in bob.roles} == {Role.ADMIN}
    async with db.session() as s:
        with pytest.raises(IdentityConflict, match="already linked to subject 's-bob'"):
            await logins.link_identity(s, "bob", ISS, "s-bob-2")
        with pytest.raises(IdentityConflict, match="linked to another account"):
            await logins.link_identity(s, "gina", ISS, "s-bob")


async def test_deprovision_revokes_everything_and_drops_managed_roles(db: Database) -> None:

    user = await first_login(db, "alice", "s-alice")
    async with db.session() as s:
        u = await s.get(User, user.id)
        assert u is not None
        token = await create_token(s, u, "t")
        digest = await logins.create_session(s, user.id, "oidc", dt.timedelta(days=1))
        await s.commit()
    async with db.session() as s:
        sessions, tokens = await logins.deprovision(s, user.id, {Role.ADMIN})
        await s.commit()
    assert len(sessions) == 1 and tokens == [hash_token(token)]
    assert sessions == [logins.hash_session_id(digest)]
    async with db.session() as s:
        assert await user_id_for_token(s, hash_token(token)) is None
        snap = await logins.snapshot(s, sessions[0])
        assert snap is not None and snap.revoked
        u = await s.get(User, user.id)
        assert u is not None and not u.roles


async def test_tokens_without_expiry_live_the_maximum_at_most(db: Database) -> None:
    """Tokens made before every token expired (no expires_at) stop at the maximum age."""
    async with db.session() as s:
        alice = await s.scalar(select(User).where(User.username == "alice"))
        assert alice is not None
        old, recent = await create_token(s, alice, "old"), await create_token(s, alice, "new")
        row = await s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(old)))
        assert row is not None and row.expires_at is None
        row.created_at = utcnow() - dt.timedelta(days=400)
        await s.commit()
    async with db.session() as s:
        year = dt.timedelta(days=365)
        assert await user_id_for_token(s, hash_token(old), year) is None
        assert await user_id_for_token(s, hash_token(old)) == alice.id
        assert await user_id_for_token(s, hash_token(recent), year) == alice.id

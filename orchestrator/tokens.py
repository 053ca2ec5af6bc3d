"""Personal API tokens: shown once, stored as SHA-256 only."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.models import ApiToken, User, utcnow

PREFIX = "atr_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(session: AsyncSession, user: User, name: str = "",
                       expires_in: dt.timedelta | None = None) -> str:
    """Create a token for ``user`` and return it in clear (the only time it exists so)."""
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:100], token_hash=hash_token(token),
                         prefix=token[:12],
                         expires_at=utcnow() + expires_in if expires_in else None))
    await session.flush()
    return token


async def user_id_for_token(session: AsyncSession, digest: str,
                            max_age: dt.timedelta | None = None) -> int | None:
    """The owner of a valid (known, unexpired, unrevoked) token, by its hash, else None.

    A token without expiry (made before every token expired) lives ``max_age`` at most.
    """
    row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked_at is not None:
        return None
    expires = row.expires_at
    if expires is None and max_age is not None:
        expires = row.created_at + max_age
    if expires is not None and expires <= utcnow():
        return None
    return row.user_id


async def tokens_of(session: AsyncSession, user_id: int) -> list[ApiToken]:
    """A user's tokens, newest first (revoked ones included, for the record)."""
    return list((await session.scalars(select(ApiToken).where(ApiToken.user_id == user_id)
                                       .order_by(ApiToken.id.desc()))).all())


async def revoke_token(session: AsyncSession, user_id: int, token_id: int) -> str | None:
    """Revoke one of ``user_id``'s tokens; returns its hash (to drop from caches), or None
    when the user has no such token. Revoking twice is harmless."""
    row = await session.get(ApiToken, token_id)
    if row is None or row.user_id != user_id:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row.token_hash


def token_state(row: ApiToken, now: dt.datetime | None = None) -> str:
    """``active``, ``expired`` or ``revoked``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return "expired"
    return "active"

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


async def user_id_for_token(session: AsyncSession, digest: str) -> int | None:
    """The owner of a valid (known, unexpired, unrevoked) token, by its hash, else None."""
    row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    return row.user_id

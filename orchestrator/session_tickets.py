"""One-time tickets that carry a browser from the portal to one instance's own origin.

The portal issues a ticket to a logged-in browser for one instance; the instance's host
(``<uid>.<sessions domain>``) redeems it once, within seconds, for a cookie valid on that
host alone. Tickets are rows (any replica may redeem what another issued); only the
SHA-256 of a ticket is stored. A ticket is bound to the instance, the user, the login
session it was issued to (the session-host cookie dies with that login) and the ``state``
the session host gave the browser before sending it to the portal (so a ticket cannot be
planted in another person's browser).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import DateTime, String, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.models import Base, utcnow

TICKET_TTL = 45.0  # seconds between issue and redemption: one redirect away


class SessionTicket(Base):
    __tablename__ = "session_tickets"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_uid: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column()
    login_digest: Mapped[str] = mapped_column(String(64))
    state_digest: Mapped[str] = mapped_column(String(64))
    next_url: Mapped[str] = mapped_column(String(1024))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)


@dataclass(frozen=True)
class Grant:
    """What a redeemed ticket vouches for."""

    instance_uid: str
    user_id: int
    login_digest: str
    next_url: str


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def issue(s: AsyncSession, *, uid: str, user_id: int, login_digest: str, state: str,
                next_url: str, ttl: float = TICKET_TTL) -> str:
    """A new ticket (the caller commits); expired tickets are swept on the way."""
    now = utcnow()
    await s.execute(delete(SessionTicket).where(SessionTicket.expires_at < now))
    ticket = secrets.token_urlsafe(32)
    s.add(SessionTicket(digest=digest(ticket), instance_uid=uid, user_id=user_id,
                        login_digest=login_digest, state_digest=digest(state),
                        next_url=next_url, expires_at=now + dt.timedelta(seconds=ttl)))
    return ticket


async def redeem(s: AsyncSession, ticket: str, *, uid: str, state: str) -> Grant | None:
    """Consume ``ticket`` (the caller commits): its grant if it is live, for ``uid`` and
    ``state``, else None. A ticket is deleted by the first attempt, whatever its outcome,
    and of two concurrent attempts only the one whose DELETE removed the row wins."""
    row = await s.scalar(select(SessionTicket).where(SessionTicket.digest == digest(ticket)))
    if row is None:
        return None
    gone = await s.execute(delete(SessionTicket).where(SessionTicket.digest == row.digest))
    if gone.rowcount != 1:  # type: ignore[attr-defined]
        return None
    if row.expires_at <= utcnow() or row.instance_uid != uid or not secrets.compare_digest(
            row.state_digest, digest(state)):
        return None
    return Grant(row.instance_uid, row.user_id, row.login_digest, row.next_url)

"""Live connections as rows, so every replica sees who is connected to which instance.

Each process records its open WebSockets (lab, desktop) as rows and keeps them fresh with
a heartbeat; recent proxied HTTP requests are one row per (instance, user, process). A
row counts while it is fresh: :data:`EXPIRY` seconds after its last heartbeat for an open
connection (so the rows of a process that died stop counting on their own), :data:`RECENT`
seconds after the last request for HTTP. Expired rows are deleted by every heartbeat.

Every function takes an open session and leaves committing to the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import DateTime, Index, String, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from orchestrator.models import Base, utcnow

EXPIRY = 20.0  # seconds an open connection's row counts after its process's last heartbeat
RECENT = 120.0  # seconds a proxied request counts as presence
HTTP = "http"


class LiveConnection(Base):
    """An open connection (``protocol`` lab/desktop) or recent requests (``http``)."""

    __tablename__ = "live_connections"
    __table_args__ = (Index("ix_live_connections_instance", "instance_uid"),
                      Index("ix_live_connections_replica", "replica"))

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    instance_uid: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column()
    protocol: Mapped[str] = mapped_column(String(16))
    replica: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def http_row_id(replica: str, uid: str, user_id: int) -> str:
    return f"{replica}/{uid}/{user_id}"


def _fresh(now: dt.datetime):  # type: ignore[no-untyped-def]
    return or_(
        and_(LiveConnection.protocol == HTTP,
             LiveConnection.last_seen_at > now - dt.timedelta(seconds=RECENT)),
        and_(LiveConnection.protocol != HTTP,
             LiveConnection.last_seen_at > now - dt.timedelta(seconds=EXPIRY)))


async def opened(session: AsyncSession, conn_id: str, uid: str, user_id: int, protocol: str,
                 replica: str) -> None:
    now = utcnow()
    session.add(LiveConnection(id=conn_id, instance_uid=uid, user_id=user_id,
                               protocol=protocol, replica=replica, opened_at=now,
                               last_seen_at=now))
    await session.flush()


async def closed(session: AsyncSession, conn_id: str) -> None:
    await session.execute(delete(LiveConnection).where(LiveConnection.id == conn_id))


async def requested(session: AsyncSession, replica: str, uid: str, user_id: int,
                    when: dt.datetime) -> None:
    """Record a proxied request of ``user_id`` to ``uid`` seen by ``replica`` at ``when``."""
    row_id = http_row_id(replica, uid, user_id)
    row = await session.get(LiveConnection, row_id)
    if row is None:
        session.add(LiveConnection(id=row_id, instance_uid=uid, user_id=user_id,
                                   protocol=HTTP, replica=replica, opened_at=when,
                                   last_seen_at=when))
    elif row.last_seen_at < when:
        row.last_seen_at = when
    await session.flush()


async def heartbeat(session: AsyncSession, replica: str, open_ids: Iterable[str]) -> None:
    """Keep ``replica``'s open connections fresh, drop its rows that are no longer open,
    and delete every expired row (of any replica)."""
    now = utcnow()
    ids = list(open_ids)
    await session.execute(update(LiveConnection).where(
        LiveConnection.replica == replica, LiveConnection.protocol != HTTP,
        LiveConnection.id.in_(ids)).values(last_seen_at=now))
    await session.execute(delete(LiveConnection).where(
        LiveConnection.replica == replica, LiveConnection.protocol != HTTP,
        LiveConnection.id.not_in(ids)))
    await session.execute(delete(LiveConnection).where(~_fresh(now)))


async def forget_replica(session: AsyncSession, replica: str) -> None:
    """A process that stops cleanly removes its rows (a crashed one's expire)."""
    await session.execute(delete(LiveConnection).where(LiveConnection.replica == replica))


async def present_users(session: AsyncSession, uid: str) -> frozenset[int]:
    """Users with a fresh row for instance ``uid`` (connected somewhere, or recently seen)."""
    rows = await session.scalars(select(LiveConnection.user_id).where(
        LiveConnection.instance_uid == uid, _fresh(utcnow())))
    return frozenset(rows.all())

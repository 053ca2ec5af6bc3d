"""Sharing's tables: instrument scientists, invitations, access requests.

Instance members themselves are :class:`orchestrator.models.InstanceMember`.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from orchestrator.models import Base, Instance, Instrument, MemberRole, User, utcnow
from orchestrator.models import _enum as string_enum


class InstrumentScientist(Base):
    """A user who supports the experiments of an instrument."""

    __tablename__ = "instrument_scientists"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id", ondelete="CASCADE"),
                                               primary_key=True)
    instrument: Mapped[Instrument] = relationship(lazy="joined")


class Invitation(Base):
    """A single-use, expiring link that makes whoever opens it a member with ``role``."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"),
                                             index=True)
    role: Mapped[MemberRole] = mapped_column(string_enum(MemberRole))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    used_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    instance: Mapped[Instance] = relationship(lazy="joined")


class RequestStatus(enum.StrEnum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REFUSED = "REFUSED"


class AccessRequest(Base):
    """A non-member asks the owner to join an instance."""

    __tablename__ = "access_requests"
    __table_args__ = (Index("ix_access_requests_instance", "instance_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    message: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[RequestStatus] = mapped_column(string_enum(RequestStatus),
                                                  default=RequestStatus.PENDING)
    role: Mapped[MemberRole | None] = mapped_column(string_enum(MemberRole))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    user: Mapped[User] = relationship(lazy="joined", foreign_keys=[user_id])

"""Building the policy's facts from the database model."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.models import Instance, Instrument, MemberRole, User
from sharing.models import InstrumentScientist
from sharing.policy import InstanceAccess, Principal


def access_of(instance: Instance) -> InstanceAccess:
    """The policy's view of ``instance`` (members and experiments must be loaded)."""
    return InstanceAccess(
        uid=instance.uid,
        owner_id=instance.owner_id,
        members={m.user_id: MemberRole(m.role) for m in instance.members},
        instruments=frozenset(e.instrument.name for e in instance.experiments if e.instrument),
        unrestricted=instance.unrestricted_member_access,
    )


async def principal_for(session: AsyncSession, user: User) -> Principal:
    """The policy's view of ``user``: roles and the instruments they are scientist of."""
    instruments = (await session.scalars(
        select(Instrument.name)
        .join(InstrumentScientist, InstrumentScientist.instrument_id == Instrument.id)
        .where(InstrumentScientist.user_id == user.id))).all()
    return Principal(user.id, user.username, frozenset(user.role_names), frozenset(instruments))

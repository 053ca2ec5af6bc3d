"""Admission control: may this user launch one more instance?"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.errors import RequestError
from orchestrator.models import Instance, InstanceStatus, Plan, User


async def admit_launch(session: AsyncSession, user: User, plan: Plan, quota: int) -> None:
    """Refuse the launch when ``user`` already owns ``quota`` live instances.

    Locks the user's row first (``SELECT ... FOR UPDATE`` on PostgreSQL) so that concurrent
    launches by one user are admitted one after the other; SQLite serialises writers itself.
    """
    await session.execute(select(User.id).where(User.id == user.id).with_for_update())
    used = await session.scalar(
        select(func.count()).select_from(Instance).where(
            Instance.owner_id == user.id, Instance.status != InstanceStatus.DELETED
        )
    )
    if used is not None and used >= quota:
        raise RequestError(
            f"quota reached: you have {used} of {quota} instances; delete one first", 409
        )

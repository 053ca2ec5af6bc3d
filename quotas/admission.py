"""Admission control: may this user launch one more instance of this plan?

Race-free: the decision and the insert of the new instance happen in one transaction that
holds a per-user lock, so concurrent launches by one user are decided one after the other,
each seeing the instances the previous ones created:

* PostgreSQL: ``SELECT ... FOR UPDATE`` on the user's row (other users are not blocked);
* SQLite: ``BEGIN IMMEDIATE`` (:func:`orchestrator.db.begin_write`), SQLite's one write lock.

The lock is released when the caller commits (or rolls back) the launch.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db import begin_write
from orchestrator.errors import RequestError
from orchestrator.models import Plan, User
from quotas.policies import Limits, limits_for
from quotas.usage import QuotaStatus, refusal, usage_of


async def lock_user(session: AsyncSession, user: User) -> None:
    """Serialise this transaction with every other admission for ``user`` (see above)."""
    await begin_write(session)
    await session.execute(select(User.id).where(User.id == user.id).with_for_update())


async def quota_status(session: AsyncSession, user: User, default_instances: int
                       ) -> QuotaStatus:
    """The user's limits and current use (a snapshot; admission re-reads under the lock)."""
    return QuotaStatus(await limits_for(session, user, default_instances),
                       await usage_of(session, user.id))


async def admit_launch(session: AsyncSession, user: User, plan: Plan, quota: int) -> Limits:
    """Refuse (409, naming the limit) when one more instance of ``plan`` exceeds ``user``'s
    quota; ``quota`` is the default number of instances (``ATRIUM_DEFAULT_QUOTA``).

    Takes the per-user lock first; the caller must insert the instance in this same
    transaction and commit it. Returns the limits in force (e.g. the maximum lifetime).
    """
    await lock_user(session, user)
    limits = await limits_for(session, user, quota)
    usage = await usage_of(session, user.id)
    flavour = plan.flavour
    why = refusal(limits, usage, flavour.name, flavour.cpus, flavour.memory_mb, flavour.gpus)
    if why is not None:
        raise RequestError(why, 409)
    return limits

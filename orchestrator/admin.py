"""What admins do besides the catalogue: people's roles and groups, finding instances.

Used by the admin pages and the admin REST API alike (callers check the ADMIN role).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.errors import RequestError
from orchestrator.models import (
    Instance,
    InstanceStatus,
    Role,
    Target,
    User,
    UserGroup,
    UserRole,
)
from orchestrator.paging import Page, count
from quotas.policies import Limits, all_policies, groups_of, limits_for, resolve
from quotas.usage import Usage, live, usage_by_owner, usage_of

GROUP_MAX = 128


def _names(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(f"{what} must be a list of names")
    return sorted({v.strip() for v in value if v.strip()})


async def set_roles_and_groups(session: AsyncSession, actor: User, user: User, *,
                               roles: object = None, groups: object = None) -> None:
    """Replace ``user``'s roles and/or groups (``None``: leave as is); commit is the
    caller's. Admins cannot take the ADMIN role from themselves (no lock-out)."""
    if roles is not None:
        wanted = _names(roles, "roles")
        bad = [r for r in wanted if r not in Role.__members__]
        if bad:
            raise RequestError(f"unknown role(s) {', '.join(bad)}; expected "
                               f"{', '.join(Role.__members__)}")
        if user.id == actor.id and Role.ADMIN in user.role_names and Role.ADMIN not in wanted:
            raise RequestError("you cannot take the ADMIN role from yourself; ask another "
                               "admin", 409)
        have = {str(r.role): r for r in user.roles}
        for role_name, row in have.items():
            if role_name not in wanted:
                user.roles.remove(row)
        for role_name in wanted:
            if role_name not in have:
                user.roles.append(UserRole(role=Role(role_name)))
    if groups is not None:
        wanted_groups = _names(groups, "groups")
        long = [g for g in wanted_groups if len(g) > GROUP_MAX]
        if long:
            raise RequestError(f"group names are at most {GROUP_MAX} characters")
        current = set(await groups_of(session, user.id))
        gone = current - set(wanted_groups)
        if gone:
            await session.execute(delete(UserGroup).where(UserGroup.user_id == user.id,
                                                          UserGroup.name.in_(gone)))
        for name in sorted(set(wanted_groups) - current):
            session.add(UserGroup(user_id=user.id, name=name))
    await session.flush()


@dataclass(frozen=True)
class UserOverview:
    user: User
    groups: list[str]
    limits: Limits
    usage: Usage


async def user_overview(session: AsyncSession, user: User, default_instances: int
                        ) -> UserOverview:
    """One user's groups, limits and current use."""
    return UserOverview(user, await groups_of(session, user.id),
                        await limits_for(session, user, default_instances),
                        await usage_of(session, user.id))


async def users_overview(session: AsyncSession, default_instances: int, query: str = "",
                         page: Page | None = None, in_use: bool = False
                         ) -> tuple[list[UserOverview], int]:
    """One page (default: the first) of the users whose name/email contains ``query`` (all
    without one; with ``in_use``, only those owning live instances), by username, with
    limits and use; and how many match in all."""
    page = page or Page()
    stmt = select(User).order_by(User.username, User.id)
    if in_use:
        stmt = stmt.where(User.id.in_(select(Instance.owner_id).where(live())))
    if query:
        like = f"%{query.lower()}%"
        stmt = stmt.where(or_(func.lower(User.username).like(like),
                              func.lower(User.display_name).like(like),
                              func.lower(User.email).like(like)))
    users = (await session.scalars(page.apply(stmt))).all()
    total = await count(session, stmt)
    ids = [u.id for u in users]
    usage = await usage_by_owner(session, ids)
    # Policies and groups read once, resolved per user in memory.
    policies = await all_policies(session)
    groups: dict[int, list[str]] = {}
    for user_id, name in await session.execute(
            select(UserGroup.user_id, UserGroup.name).where(UserGroup.user_id.in_(ids))
            .order_by(UserGroup.name)):
        groups.setdefault(user_id, []).append(name)
    return [UserOverview(user, groups.get(user.id, []),
                         resolve(policies, username=user.username, roles=user.role_names,
                                 groups=groups.get(user.id, []),
                                 default_instances=default_instances),
                         usage.get(user.id, Usage()))
            for user in users], total


@dataclass(frozen=True)
class InstanceFilter:
    """Filters of the admin's instance list; empty values do not filter."""

    status: str = ""
    owner: str = ""
    backend: str = ""
    plan_id: int | None = None
    text: str = ""
    include_deleted: bool = False

    @classmethod
    def of(cls, get: dict[str, str]) -> InstanceFilter:
        """From query arguments; a bad status or plan id is a 400."""
        status = get.get("status", "").upper()
        if status and status not in InstanceStatus.__members__:
            raise RequestError(f"unknown status {status!r}; one of "
                               f"{', '.join(InstanceStatus.__members__)}")
        plan = get.get("plan_id", "")
        if plan and not plan.isdigit():
            raise RequestError("plan_id must be a plan's id (an integer)")
        return cls(status=status, owner=get.get("owner", "").strip(),
                   backend=get.get("backend", "").strip(),
                   plan_id=int(plan) if plan else None, text=get.get("q", "").strip(),
                   include_deleted=get.get("include_deleted", "") in ("1", "true", "on")
                   or status == InstanceStatus.DELETED)


async def find_instances(session: AsyncSession, f: InstanceFilter, page: Page | None = None
                         ) -> tuple[Sequence[Instance], int]:
    """One page (default: the first) of all users' instances matching ``f``, newest first;
    and how many match in all."""
    stmt = select(Instance).order_by(Instance.created_at.desc(), Instance.id.desc())
    if f.status:
        stmt = stmt.where(Instance.status == InstanceStatus(f.status))
    elif not f.include_deleted:
        stmt = stmt.where(Instance.status != InstanceStatus.DELETED)
    if f.owner:
        stmt = stmt.where(Instance.owner_id.in_(
            select(User.id).where(User.username == f.owner)))
    if f.backend:
        stmt = stmt.where(Instance.backend == f.backend)
    if f.plan_id is not None:
        stmt = stmt.where(Instance.plan_id == f.plan_id)
    if f.text:
        like = f"%{f.text.lower()}%"
        stmt = stmt.where(or_(func.lower(Instance.name).like(like),
                              Instance.uid.like(like)))
    page = page or Page()
    return (await session.scalars(page.apply(stmt))).unique().all(), await count(session, stmt)


def is_live(instance: Instance) -> bool:
    return instance.status is not InstanceStatus.DELETED and \
        instance.target is not Target.DELETED

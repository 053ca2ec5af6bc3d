"""Quota policies: which limits apply to a user.

Policies exist per user, per group, per role and one default (``QuotaPolicy``). Each limit
is resolved on its own: it comes from the most specific policy that sets it (user, then
group, then role, then default); a policy leaves a limit to less specific ones by not
setting it (``None``). When several policies of one scope match (a user in two groups, or
with two roles), the most generous of them applies: roles and groups add rights, they do
not take them away. The number of instances falls back to ``ATRIUM_DEFAULT_QUOTA``; the
other limits are unlimited unless a policy sets them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.models import QuotaPolicy, QuotaScope, User, UserGroup

# Limit name -> QuotaPolicy column, in display order.
LIMITS: dict[str, str] = {
    "instances": "max_instances",
    "cpus": "max_cpus",
    "memory_mb": "max_memory_mb",
    "gpus": "max_gpus",
    "lifetime_hours": "max_lifetime_hours",
}
SPECIFICITY = (QuotaScope.USER, QuotaScope.GROUP, QuotaScope.ROLE, QuotaScope.DEFAULT)


@dataclass(frozen=True)
class Limits:
    """The limits in force for one user; ``None`` is unlimited. ``sources`` says, per limit,
    where it came from (e.g. ``"role STAFF"``), for people wondering why."""

    instances: int | None = None
    cpus: float | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    lifetime_hours: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in LIMITS} | {"sources": dict(self.sources)}


def describe(policy: QuotaPolicy) -> str:
    """``"user alice"``, ``"group beamline-x"``, ``"role STAFF"`` or ``"default"``."""
    if policy.scope is QuotaScope.DEFAULT:
        return "default"
    return f"{policy.scope.value.lower()} {policy.subject}"


def resolve(policies: Iterable[QuotaPolicy], *, username: str, roles: Iterable[str],
            groups: Iterable[str], default_instances: int) -> Limits:
    """The limits for a user with these names (pure: ``policies`` may be any superset)."""
    wanted = {QuotaScope.USER: {username}, QuotaScope.GROUP: set(groups),
              QuotaScope.ROLE: {str(r) for r in roles}, QuotaScope.DEFAULT: {""}}
    by_scope: dict[QuotaScope, list[QuotaPolicy]] = {scope: [] for scope in SPECIFICITY}
    for policy in policies:
        if policy.subject in wanted[policy.scope] or policy.scope is QuotaScope.DEFAULT:
            by_scope[policy.scope].append(policy)
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name, column in LIMITS.items():
        for scope in SPECIFICITY:
            candidates = [(getattr(p, column), p) for p in by_scope[scope]
                          if getattr(p, column) is not None]
            if candidates:
                value, policy = max(candidates, key=lambda c: c[0])
                values[name], sources[name] = value, describe(policy)
                break
    if "instances" not in values:
        values["instances"], sources["instances"] = default_instances, "ATRIUM_DEFAULT_QUOTA"
    return Limits(**values, sources=sources)  # type: ignore[arg-type]


async def groups_of(session: AsyncSession, user_id: int) -> list[str]:
    rows = await session.scalars(select(UserGroup.name).where(UserGroup.user_id == user_id)
                                 .order_by(UserGroup.name))
    return list(rows)


async def limits_for(session: AsyncSession, user: User, default_instances: int) -> Limits:
    """The limits in force for ``user`` now (reads only the policies that can match)."""
    groups = await groups_of(session, user.id)
    policies = await session.scalars(select(QuotaPolicy).where(or_(
        QuotaPolicy.scope == QuotaScope.DEFAULT,
        (QuotaPolicy.scope == QuotaScope.USER) & (QuotaPolicy.subject == user.username),
        (QuotaPolicy.scope == QuotaScope.GROUP) & QuotaPolicy.subject.in_(groups or [""]),
        (QuotaPolicy.scope == QuotaScope.ROLE) & QuotaPolicy.subject.in_(
            sorted(user.role_names) or [""]),
    )))
    return resolve(policies.all(), username=user.username, roles=user.role_names,
                   groups=groups, default_instances=default_instances)


async def all_policies(session: AsyncSession) -> Sequence[QuotaPolicy]:
    """Every policy, most specific scope first, then by subject."""
    rows = (await session.scalars(select(QuotaPolicy))).all()
    return sorted(rows, key=lambda p: (SPECIFICITY.index(p.scope), p.subject))

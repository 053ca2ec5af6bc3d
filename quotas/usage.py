"""Current use of resources against quota: per user and per experiment.

Every instance that is not deleted and not being deleted counts, running or stopped: a
stopped instance keeps its disk and can be started again without asking for admission.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.models import (
    Flavour,
    Instance,
    InstanceExperiment,
    InstanceStatus,
    Plan,
    Target,
)
from quotas.policies import Limits


def live() -> ColumnElement[bool]:
    """Instances that hold resources (or will soon): everything not deleted."""
    return (Instance.target != Target.DELETED) & (Instance.status != InstanceStatus.DELETED)


@dataclass(frozen=True)
class Usage:
    instances: int = 0
    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0


def fmt(value: float) -> str:
    """2.0 -> '2', 2.5 -> '2.5': numbers as people write them."""
    return f"{value:g}"


def gib(memory_mb: float) -> str:
    return f"{fmt(round(memory_mb / 1024, 2))} GiB"


def _sums() -> tuple[Any, ...]:
    return (func.count(Instance.id), func.coalesce(func.sum(Flavour.cpus), 0),
            func.coalesce(func.sum(Flavour.memory_mb), 0),
            func.coalesce(func.sum(Flavour.gpus), 0))


def _usage(row: Sequence[Any]) -> Usage:
    n, cpus, memory, gpus = row
    return Usage(int(n), float(cpus), int(memory), int(gpus))


async def usage_of(session: AsyncSession, user_id: int) -> Usage:
    """What ``user_id``'s live instances hold (read it under the admission lock to decide)."""
    row = (await session.execute(
        select(*_sums()).select_from(Instance)
        .join(Plan, Plan.id == Instance.plan_id).join(Flavour, Flavour.id == Plan.flavour_id)
        .where(Instance.owner_id == user_id, live()))).one()
    return _usage(tuple(row))


async def usage_by_owner(session: AsyncSession, owners: Iterable[int] | None = None
                         ) -> dict[int, Usage]:
    """Live use by user id of every user who has some, or of ``owners`` (admin overview)."""
    query = (select(Instance.owner_id, *_sums()).select_from(Instance)
             .join(Plan, Plan.id == Instance.plan_id)
             .join(Flavour, Flavour.id == Plan.flavour_id)
             .where(live()).group_by(Instance.owner_id))
    if owners is not None:
        query = query.where(Instance.owner_id.in_(list(owners)))
    rows = await session.execute(query)
    return {owner: _usage(rest) for owner, *rest in rows}


async def usage_by_experiment(session: AsyncSession, experiment_ids: Iterable[int],
                              owner_id: int | None = None) -> dict[int, Usage]:
    """Live use of instances with each experiment's data (all members', or one owner's)."""
    ids = list(experiment_ids)
    if not ids:
        return {}
    query = (select(InstanceExperiment.experiment_id, *_sums()).select_from(Instance)
             .join(InstanceExperiment, InstanceExperiment.instance_id == Instance.id)
             .join(Plan, Plan.id == Instance.plan_id)
             .join(Flavour, Flavour.id == Plan.flavour_id)
             .where(live(), InstanceExperiment.experiment_id.in_(ids))
             .group_by(InstanceExperiment.experiment_id))
    if owner_id is not None:
        query = query.where(Instance.owner_id == owner_id)
    return {eid: _usage(rest) for eid, *rest in await session.execute(query)}


@dataclass(frozen=True)
class QuotaLine:
    """One limit as people see it: ``2 of 4 vCPU`` and what remains."""

    name: str
    label: str
    used: str
    limit: str | None  # None: unlimited
    remaining: str | None
    exhausted: bool


@dataclass(frozen=True)
class QuotaStatus:
    limits: Limits
    usage: Usage

    def lines(self) -> list[QuotaLine]:
        out = []
        for name, label, used, limit, show in (
            ("instances", "Instances", self.usage.instances, self.limits.instances, fmt),
            ("cpus", "vCPU", self.usage.cpus, self.limits.cpus, fmt),
            ("memory_mb", "Memory", self.usage.memory_mb, self.limits.memory_mb, gib),
            ("gpus", "GPU", self.usage.gpus, self.limits.gpus, fmt),
        ):
            if limit is None:
                out.append(QuotaLine(name, label, show(used), None, None, False))
            else:
                out.append(QuotaLine(name, label, show(used), show(limit),
                                     show(max(limit - used, 0)), used >= limit))
        return out

    def as_dict(self) -> dict[str, object]:
        """For the API: used, limit (None: unlimited) and remaining per resource."""
        result: dict[str, object] = {}
        for name in ("instances", "cpus", "memory_mb", "gpus"):
            used, limit = getattr(self.usage, name), getattr(self.limits, name)
            result[name] = {"used": used, "limit": limit,
                            "remaining": None if limit is None else max(limit - used, 0),
                            "source": self.limits.sources.get(name)}
        result["lifetime_hours"] = {"limit": self.limits.lifetime_hours,
                                    "source": self.limits.sources.get("lifetime_hours")}
        return result

    def fits(self, cpus: float, memory_mb: int, gpus: int) -> bool:
        """Would one more instance of this size be admitted now?"""
        return refusal(self.limits, self.usage, "", cpus, memory_mb, gpus) is None


def refusal(limits: Limits, usage: Usage, flavour: str, cpus: float, memory_mb: int,
            gpus: int) -> str | None:
    """Why one more instance of this size exceeds ``limits`` (the first limit hit), or None.

    The message names the limit and the numbers, e.g. "you have 2 of 2 instances".
    """
    if limits.instances is not None and usage.instances + 1 > limits.instances:
        return (f"quota reached: you have {usage.instances} of {limits.instances} instances; "
                "delete one first")
    for unit, scale, used, need, limit in (
        ("vCPU", 1.0, usage.cpus, cpus, limits.cpus),
        ("GiB of memory", 1024.0, usage.memory_mb, memory_mb, limits.memory_mb),
        ("GPU", 1.0, usage.gpus, gpus, limits.gpus),
    ):
        if limit is None or used + need <= limit + 1e-9:
            continue

        def n(value: float, scale: float = scale) -> str:
            return fmt(round(value / scale, 2))

        if need > limit:
            return (f"quota too small: the {flavour} flavour needs {n(need)} {unit} and your "
                    f"quota allows {n(limit)} in total; choose a smaller plan")
        return (f"quota reached: you use {n(used)} of {n(limit)} {unit} and the {flavour} "
                f"flavour needs {n(need)} more; delete an instance or choose a smaller plan")
    return None

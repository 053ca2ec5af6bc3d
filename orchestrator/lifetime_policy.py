"""The lifetime rules as pure functions: how long an instance may live, how long it may sit
unused, when its owner is warned. No I/O, so pages, API, jobs and tests agree.

Times are naive UTC datetimes, as everywhere in the database. Every decision takes ``now``
from a :data:`Clock` (a callable) rather than reading the system clock, so tests can script
time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from orchestrator.settings import INACTIVITY_DAYS, LIFETIME_DAYS, Settings

Clock = Callable[[], dt.datetime]
"""Returns "now" as a naive UTC datetime (``orchestrator.models.utcnow`` in production)."""

LIFETIME = "lifetime"
INACTIVITY = "inactivity"


def role_value(table: Mapping[str, float], roles: Iterable[str]) -> float | None:
    """The value for a person holding ``roles``: the largest among the roles listed in
    ``table`` (roles add rights), else the default (key ``""``), else None."""
    values = [table[r] for r in roles if r in table]
    if values:
        return max(values)
    return table.get("")


@dataclass(frozen=True)
class Deadline:
    """One way an instance ends: ``kind`` (lifetime or inactivity) at ``at``; its owner is
    warned from ``warn_from`` on."""

    kind: str
    at: dt.datetime
    warn_from: dt.datetime

    def warning_due(self, now: dt.datetime) -> bool:
        return now >= self.warn_from

    def passed(self, now: dt.datetime) -> bool:
        return now >= self.at


@dataclass(frozen=True)
class LifetimePolicy:
    """Lifetime, inactivity and extension rules (see ``orchestrator/settings.py``)."""

    lifetime_days: Mapping[str, float] = field(default_factory=lambda: dict(LIFETIME_DAYS))
    flavour_lifetime_days: Mapping[str, float] = field(default_factory=dict)
    inactivity_days: Mapping[str, float] = field(default_factory=lambda: dict(INACTIVITY_DAYS))
    lifetime_warning: dt.timedelta = dt.timedelta(hours=48)
    inactivity_warning: dt.timedelta = dt.timedelta(hours=24)
    auto_accept_days: Mapping[str, float] = field(default_factory=dict)
    extension_max_days: float = 90.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LifetimePolicy:
        return cls(lifetime_days=dict(settings.lifetime_days),
                   flavour_lifetime_days=dict(settings.flavour_lifetime_days),
                   inactivity_days=dict(settings.inactivity_days),
                   lifetime_warning=dt.timedelta(hours=settings.lifetime_warning_hours),
                   inactivity_warning=dt.timedelta(hours=settings.inactivity_warning_hours),
                   auto_accept_days=dict(settings.extension_auto_accept_days),
                   extension_max_days=settings.extension_max_days)

    def lifetime(self, roles: Iterable[str], flavour: str,
                 quota_hours: float | None = None) -> dt.timedelta:
        """The lifetime of a new instance: the owner's role's, capped by the flavour's entry
        and by the quota policies' maximum (``quota_hours``), whichever is shortest."""
        days = role_value(self.lifetime_days, roles)
        candidates = [days * 86400 if days is not None else float("inf")]
        if flavour in self.flavour_lifetime_days:
            candidates.append(self.flavour_lifetime_days[flavour] * 86400)
        if quota_hours is not None:
            candidates.append(quota_hours * 3600)
        seconds = min(candidates)
        if seconds == float("inf"):
            seconds = LIFETIME_DAYS[""] * 86400  # no table entry at all: never forever
        return dt.timedelta(seconds=seconds)

    def termination_at_launch(self, now: dt.datetime, roles: Iterable[str], flavour: str,
                              quota_hours: float | None = None) -> dt.datetime:
        return now + self.lifetime(roles, flavour, quota_hours)

    def inactivity_limit(self, roles: Iterable[str]) -> dt.timedelta | None:
        """How long an instance of an owner with ``roles`` may go unused; None: forever."""
        days = role_value(self.inactivity_days, roles)
        return dt.timedelta(days=days) if days else None

    def shortest_inactivity(self) -> dt.timedelta | None:
        """The shortest inactivity limit of any role (the sweeps' pre-filter)."""
        values = [v for v in self.inactivity_days.values() if v]
        return dt.timedelta(days=min(values)) if values else None

    def auto_accept(self, roles: Iterable[str], days: float) -> bool:
        """Is a request for ``days`` more from an owner with ``roles`` accepted at once?"""
        limit = role_value(self.auto_accept_days, roles)
        return limit is not None and days <= limit

    def deadlines(self, roles: Iterable[str], *, termination_date: dt.datetime | None,
                  last_seen_at: dt.datetime | None, activated_at: dt.datetime | None,
                  created_at: dt.datetime) -> list[Deadline]:
        """The instance's deadlines, soonest first.

        Inactivity counts from the last recorded activity, or from when the instance first
        became active (or was created) if nobody has used it yet.
        """
        result: list[Deadline] = []
        if termination_date is not None:
            result.append(Deadline(LIFETIME, termination_date,
                                   termination_date - self.lifetime_warning))
        limit = self.inactivity_limit(roles)
        if limit is not None:
            since = last_seen_at or activated_at or created_at
            at = since + limit
            result.append(Deadline(INACTIVITY, at, at - self.inactivity_warning))
        return sorted(result, key=lambda d: d.at)


def describe(deadline: Deadline) -> str:
    """Words for a deadline, e.g. in events and emails."""
    when = deadline.at.strftime("%Y-%m-%d %H:%M UTC")
    if deadline.kind == LIFETIME:
        return f"its lifetime ends on {when}"
    return f"unused, it will be deleted on {when}"

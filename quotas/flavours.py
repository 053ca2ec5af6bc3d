"""Flavour limits: a flavour may be reserved for some roles or some instruments' experiments.

A flavour without limits is open to everyone. A limited flavour may be used by a holder of
one of its roles, or for a launch that includes an experiment on one of its instruments
(the experiment justifies the resources). Admins may use every flavour (to test them).
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.models import Flavour, Role


def reserved_for(flavour: Flavour) -> str:
    """``"STAFF, or experiments on LOKI"`` - who a limited flavour is for."""
    parts = []
    if flavour.limit_roles:
        parts.append(" or ".join(sorted(flavour.limit_roles)))
    if flavour.limit_instruments:
        parts.append("experiments on " + " or ".join(sorted(flavour.limit_instruments)))
    return ", or ".join(parts)


def may_offer(flavour: Flavour, roles: Iterable[str], instruments: Iterable[str]) -> bool:
    """Whether to offer the flavour to someone with ``roles`` who is a member of experiments
    on ``instruments`` (the launch must then include one of those experiments)."""
    roles = set(roles)
    if not flavour.limited or Role.ADMIN in roles or roles & set(flavour.limit_roles):
        return True
    return bool(set(instruments) & set(flavour.limit_instruments))


def launch_refusal(flavour: Flavour, roles: Iterable[str],
                   chosen_instruments: Iterable[str]) -> str | None:
    """Why a launch with experiments on ``chosen_instruments`` may not use ``flavour``."""
    roles = set(roles)
    if not flavour.limited or Role.ADMIN in roles or roles & set(flavour.limit_roles):
        return None
    if set(chosen_instruments) & set(flavour.limit_instruments):
        return None
    hint = "; select one of those experiments" if flavour.limit_instruments else ""
    return f"the {flavour.name} flavour is reserved for {reserved_for(flavour)}{hint}"

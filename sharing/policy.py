"""THE authorization policy: may this person do this action on this instance?

Pure functions over small frozen facts, so the pages, the REST API, the JupyterLab proxy
and the desktop bridge all ask the same question the same way, and the proxy can ask it
from an in-memory snapshot without a database query per request.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.models import MemberRole, Role


class Action(enum.StrEnum):
    VIEW = "view"  # see the instance, its state and members
    OPEN_LAB = "open_lab"  # use JupyterLab through the proxy
    DESKTOP_INPUT = "desktop_input"  # type and click in the desktop
    DESKTOP_WATCH = "desktop_watch"  # see the desktop
    CONTROL = "control"  # start, stop, reboot
    DELETE = "delete"
    MANAGE_MEMBERS = "manage_members"
    READ_AUDIT = "read_audit"


_ALL = frozenset(Action)
_FULL_CONTROL = frozenset({Action.VIEW, Action.OPEN_LAB, Action.DESKTOP_INPUT,
                           Action.DESKTOP_WATCH, Action.CONTROL})

MEMBER_GRANTS: Mapping[MemberRole, frozenset[Action]] = {
    MemberRole.OWNER: _ALL,
    MemberRole.USER: _FULL_CONTROL,
    MemberRole.GUEST: frozenset({Action.VIEW, Action.DESKTOP_WATCH}),
    MemberRole.SUPPORT: _FULL_CONTROL | {Action.READ_AUDIT},
}


@dataclass(frozen=True)
class Principal:
    """Who is asking: an authenticated user, with their global roles."""

    user_id: int
    username: str
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles


@dataclass(frozen=True)
class InstanceAccess:
    """What the policy needs to know about one instance."""

    uid: str
    owner_id: int
    members: Mapping[int, MemberRole] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200  # the HTTP status to answer when refused
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(True)


def member_role(who: Principal, access: InstanceAccess) -> MemberRole | None:
    if who.user_id == access.owner_id:
        return MemberRole.OWNER
    return access.members.get(who.user_id)


def authorize(who: Principal | None, access: InstanceAccess, action: Action) -> Decision:
    """Decide ``action`` for ``who``; a refusal carries the status code to answer with.

    Anonymous callers get 401. Callers with no relation to the instance get 404, so the
    existence of other people's instances is not revealed; members lacking the right get 403.
    """
    if who is None:
        return Decision(False, 401, "log in first")
    if who.is_admin:
        return ALLOW
    role = member_role(who, access)
    if role is None:
        return Decision(False, 404, "no such instance")
    if action in MEMBER_GRANTS[role]:
        return ALLOW
    return Decision(False, 403, f"your role on this instance ({role.value}) does not allow "
                                f"{action.value.replace('_', ' ')}")

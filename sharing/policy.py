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
    JOIN_SUPPORT = "join_support"  # become a SUPPORT member, audited


# Actions that open a connection to the session: for USER and GUEST members they need the
# owner to be connected, unless the owner allowed unrestricted member access.
CONNECT = frozenset({Action.OPEN_LAB, Action.DESKTOP_INPUT, Action.DESKTOP_WATCH})


_ALL = frozenset(Action) - {Action.JOIN_SUPPORT}
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
    instruments: frozenset[str] = frozenset()  # instruments they are a scientist of

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def supports(self, access: InstanceAccess) -> bool:
        """Staff who may find and join this instance to help (SUPPORT, or instrument
        scientists of one of its experiments' instruments)."""
        if Role.SUPPORT in self.roles:
            return True
        return Role.INSTRUMENT_SCIENTIST in self.roles and bool(
            self.instruments & access.instruments)


@dataclass(frozen=True)
class InstanceAccess:
    """What the policy needs to know about one instance."""

    uid: str
    owner_id: int
    members: Mapping[int, MemberRole] = field(default_factory=dict)
    instruments: frozenset[str] = frozenset()  # of the instance's experiments
    unrestricted: bool = False  # members may connect while the owner is away


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


def authorize(who: Principal | None, access: InstanceAccess, action: Action,
              owner_present: bool = True) -> Decision:
    """Decide ``action`` for ``who``; a refusal carries the status code to answer with.

    Anonymous callers get 401. Callers with no relation to the instance get 404, so the
    existence of other people's instances is not revealed; members lacking the right get 403.
    ``owner_present`` says whether the owner is connected right now: USER and GUEST members
    connect only then, unless the owner allowed unrestricted member access.
    """
    if who is None:
        return Decision(False, 401, "log in first")
    if who.is_admin:
        return ALLOW
    role = member_role(who, access)
    if role is None:
        if who.supports(access):
            if action in (Action.VIEW, Action.JOIN_SUPPORT):
                return ALLOW
            return Decision(False, 403, "join the instance as support first")
        return Decision(False, 404, "no such instance")
    if action not in MEMBER_GRANTS[role]:
        return Decision(False, 403, f"your role on this instance ({role.value}) does not "
                                    f"allow {action.value.replace('_', ' ')}")
    if (action in CONNECT and role in (MemberRole.USER, MemberRole.GUEST)
            and not access.unrestricted and not owner_present):
        return Decision(False, 403, "members may connect only while the owner is connected "
                                    "(the owner can allow unrestricted access)")
    return ALLOW

"""The sharing policy's decisions (the full matrix over entry points grows with sharing)."""

from __future__ import annotations

import pytest

from orchestrator.models import MemberRole
from sharing.policy import Action, InstanceAccess, Principal, authorize

OWNER, FULL, GUEST, OTHER, ADMIN = 1, 2, 3, 4, 5
ACCESS = InstanceAccess("abc", owner_id=OWNER,
                        members={OWNER: MemberRole.OWNER, FULL: MemberRole.USER,
                                 GUEST: MemberRole.GUEST})
WHO = {
    "owner": Principal(OWNER, "o"), "user": Principal(FULL, "u"), "guest": Principal(GUEST, "g"),
    "outsider": Principal(OTHER, "x"), "admin": Principal(ADMIN, "a", frozenset({"ADMIN"})),
    "anonymous": None,
}
A = Action
# Expected status per (who, action): 200 allowed, else the refusal's HTTP status.
EXPECTED = {
    "owner":     {**{a: 200 for a in A}, A.JOIN_SUPPORT: 403},
    "user":      {A.VIEW: 200, A.OPEN_LAB: 200, A.DESKTOP_INPUT: 200, A.DESKTOP_WATCH: 200,
                  A.CONTROL: 200, A.DELETE: 403, A.MANAGE_MEMBERS: 403, A.READ_AUDIT: 403,
                  A.JOIN_SUPPORT: 403},
    "guest":     {A.VIEW: 200, A.OPEN_LAB: 403, A.DESKTOP_INPUT: 403, A.DESKTOP_WATCH: 200,
                  A.CONTROL: 403, A.DELETE: 403, A.MANAGE_MEMBERS: 403, A.READ_AUDIT: 403,
                  A.JOIN_SUPPORT: 403},
    "outsider":  {a: 404 for a in A},
    "admin":     {a: 200 for a in A},
    "anonymous": {a: 401 for a in A},
}


@pytest.mark.parametrize("who", list(EXPECTED))
@pytest.mark.parametrize("action", list(Action))
def test_policy_table(who: str, action: Action) -> None:
    decision = authorize(WHO[who], ACCESS, action)
    assert (200 if decision.allowed else decision.status) == EXPECTED[who][action]

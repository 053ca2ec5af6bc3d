"""Building the policy's facts from the database model."""

from __future__ import annotations

from orchestrator.models import Instance, MemberRole
from sharing.policy import InstanceAccess


def access_of(instance: Instance) -> InstanceAccess:
    """The policy's view of ``instance`` (its members must be loaded)."""
    return InstanceAccess(
        uid=instance.uid,
        owner_id=instance.owner_id,
        members={m.user_id: MemberRole(m.role) for m in instance.members},
    )

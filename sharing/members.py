"""Sharing an instance: members and roles, invitation links, access requests, support access.

Every function checks the policy for its actor, records an audit event, and leaves the
commit to the caller (pages and API commit, then revalidate open connections).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.errors import RequestError
from orchestrator.lifecycle import record
from orchestrator.models import (
    Experiment,
    Instance,
    InstanceExperiment,
    InstanceMember,
    InstanceStatus,
    Instrument,
    MemberRole,
    Role,
    User,
    utcnow,
)
from orchestrator.paging import Page, count
from sharing.access import access_of, principal_for
from sharing.models import AccessRequest, Invitation, RequestStatus
from sharing.policy import Action, Principal, authorize

GRANTABLE = (MemberRole.USER, MemberRole.GUEST)
INVITATION_PREFIX = "inv_"
MAX_INVITATION_HOURS = 24 * 30


async def require(session: AsyncSession, actor: User, instance: Instance,
                  action: Action) -> None:
    decision = authorize(await principal_for(session, actor), access_of(instance), action)
    if not decision:
        raise RequestError(decision.reason, decision.status)


def grantable_role(value: object) -> MemberRole:
    if value not in [r.value for r in GRANTABLE]:
        raise RequestError("role must be USER (full control) or GUEST (watch only)")
    return MemberRole(str(value))


async def find_user(session: AsyncSession, who: object) -> User:
    """A known user by username, else by email (case-insensitive).

    A username wins over an email. An email several users share is ambiguous: refused
    (409) rather than guessed, since the wrong person would get the instance.
    """
    if not isinstance(who, str) or not who.strip():
        raise RequestError("give a username or an email address")
    who = who.strip()
    if len(who) > 255:
        raise RequestError("a username or email address is at most 255 characters")
    user = await session.scalar(select(User).where(User.username == who))
    if user is not None:
        return user
    matches = (await session.scalars(select(User).where(
        func.lower(User.email) == who.lower()).limit(2))).all()
    if len(matches) > 1:
        raise RequestError(f"several users have the email address {who!r}: give the "
                           "username of the one you mean", 409)
    if not matches:
        raise RequestError(f"no user {who!r} is known to Atrium", 404)
    return matches[0]


def _membership(instance: Instance, user: User) -> InstanceMember | None:
    return next((m for m in instance.members if m.user_id == user.id), None)


async def add_member(session: AsyncSession, actor: User, instance: Instance, who: object,
                     role: object) -> InstanceMember:
    await require(session, actor, instance, Action.MANAGE_MEMBERS)
    member_role = grantable_role(role)
    user = await find_user(session, who)
    if _membership(instance, user) is not None:
        raise RequestError(f"{user.username} is already a member", 409)
    member = InstanceMember(instance_id=instance.id, user=user, role=member_role)
    instance.members.append(member)
    record(session, instance, actor, "member-added", f"{user.username} as {member_role.value}")
    return member


def read_secrets(before: MemberRole | None, after: MemberRole | None) -> bool:
    """Did a member lose the access through which they could read the instance's secrets
    (a USER runs code in the session; a GUEST only watches)? Then rotate them."""
    return before is MemberRole.USER and after is not MemberRole.USER


async def change_role(session: AsyncSession, actor: User, instance: Instance, username: str,
                      role: object) -> MemberRole:
    """Set a member's role; returns the role they had."""
    await require(session, actor, instance, Action.MANAGE_MEMBERS)
    member_role = grantable_role(role)
    member = next((m for m in instance.members if m.user.username == username), None)
    if member is None:
        raise RequestError(f"{username} is not a member", 404)
    if member.role is MemberRole.OWNER:
        raise RequestError("the owner's role cannot be changed", 409)
    before, member.role = member.role, member_role
    record(session, instance, actor, "member-role", f"{username} is now {member_role.value}")
    return before


async def remove_member(session: AsyncSession, actor: User, instance: Instance,
                        username: str) -> MemberRole:
    """The owner (or an admin) removes a member; members may remove themselves. Returns
    the role they had."""
    if username != actor.username:
        await require(session, actor, instance, Action.MANAGE_MEMBERS)
    member = next((m for m in instance.members if m.user.username == username), None)
    if member is None:
        raise RequestError(f"{username} is not a member", 404)
    if member.role is MemberRole.OWNER:
        raise RequestError("the owner cannot be removed", 409)
    instance.members.remove(member)
    await session.delete(member)
    record(session, instance, actor, "member-removed", username)
    return member.role


async def set_unrestricted(session: AsyncSession, actor: User, instance: Instance,
                           value: object) -> None:
    await require(session, actor, instance, Action.MANAGE_MEMBERS)
    if not isinstance(value, bool):
        raise RequestError("unrestricted_member_access must be true or false")
    instance.unrestricted_member_access = value
    record(session, instance, actor, "unrestricted-access", "on" if value else "off")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_invitation(session: AsyncSession, actor: User, instance: Instance,
                            role: object, hours: object = 72) -> tuple[str, Invitation]:
    """A single-use link token (returned in clear once; only its hash is stored)."""
    await require(session, actor, instance, Action.MANAGE_MEMBERS)
    member_role = grantable_role(role)
    if not isinstance(hours, int | float) or isinstance(hours, bool) or not (
            0 < hours <= MAX_INVITATION_HOURS):
        raise RequestError(f"the link must expire within 1 to {MAX_INVITATION_HOURS} hours")
    token = INVITATION_PREFIX + secrets.token_urlsafe(24)
    invitation = Invitation(instance_id=instance.id, role=member_role,
                            token_hash=_hash(token), created_by=actor.id,
                            expires_at=utcnow() + dt.timedelta(hours=float(hours)))
    session.add(invitation)
    record(session, instance, actor, "invitation-created", f"for a {member_role.value}")
    await session.flush()
    return token, invitation


async def accept_invitation(session: AsyncSession, user: User, token: str) -> Instance:
    """Make ``user`` a member through an invitation; each link works once, before expiry."""
    invitation = await session.scalar(select(Invitation).where(
        Invitation.token_hash == _hash(token)))
    if invitation is None or invitation.instance.deleted_at is not None:
        raise RequestError("this invitation link is not valid", 404)
    instance = invitation.instance
    if invitation.used_at is not None:
        raise RequestError("this invitation link was already used", 410)
    if invitation.expires_at <= utcnow():
        raise RequestError("this invitation link has expired", 410)
    if _membership(instance, user) is not None or instance.owner_id == user.id:
        return instance  # already in: keep the link for whom it was meant
    # Consume atomically: of two concurrent uses, one updates the row, the other fails.
    used = await session.execute(
        update(Invitation).where(Invitation.id == invitation.id, Invitation.used_at.is_(None))
        .values(used_at=utcnow(), used_by=user.id))
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise RequestError("this invitation link was already used", 410)
    instance.members.append(InstanceMember(instance_id=instance.id, user=user,
                                           role=invitation.role))
    record(session, instance, user, "invitation-used", f"joined as {invitation.role.value}")
    return instance


async def request_access(session: AsyncSession, user: User, instance: Instance,
                         message: object = "") -> AccessRequest:
    if _membership(instance, user) is not None:
        raise RequestError("you are already a member", 409)
    text = message if isinstance(message, str) else ""
    if len(text) > 1000:
        raise RequestError("the message is too long (at most 1000 characters)")
    pending = await session.scalar(select(AccessRequest).where(
        AccessRequest.instance_id == instance.id, AccessRequest.user_id == user.id,
        AccessRequest.status == RequestStatus.PENDING))
    if pending is not None:
        raise RequestError("you already asked; the owner has not answered yet", 409)
    request = AccessRequest(instance_id=instance.id, user=user, message=text.strip())
    session.add(request)
    record(session, instance, user, "access-requested", text[:200])
    await session.flush()
    return request


async def pending_requests(session: AsyncSession, instance: Instance) -> Sequence[AccessRequest]:
    return (await session.scalars(select(AccessRequest).where(
        AccessRequest.instance_id == instance.id,
        AccessRequest.status == RequestStatus.PENDING).order_by(AccessRequest.id))).all()


async def decide_request(session: AsyncSession, actor: User, instance: Instance,
                         request_id: int, accept: bool, role: object = "USER") -> AccessRequest:
    await require(session, actor, instance, Action.MANAGE_MEMBERS)
    request = await session.get(AccessRequest, request_id)
    if request is None or request.instance_id != instance.id:
        raise RequestError("no such access request", 404)
    if request.status is not RequestStatus.PENDING:
        raise RequestError(f"the request was already {request.status.value.lower()}", 409)
    request.decided_at = utcnow()
    request.decided_by = actor.id
    if accept:
        member_role = grantable_role(role)
        request.status, request.role = RequestStatus.ACCEPTED, member_role
        if _membership(instance, request.user) is None:
            instance.members.append(InstanceMember(instance_id=instance.id, user=request.user,
                                                   role=member_role))
        record(session, instance, actor, "access-accepted",
               f"{request.user.username} as {member_role.value}")
    else:
        request.status = RequestStatus.REFUSED
        record(session, instance, actor, "access-refused", request.user.username)
    return request


async def join_as_support(session: AsyncSession, actor: User, instance: Instance,
                          reason: object = "") -> InstanceMember:
    """Staff join to help: a SUPPORT member, in the audit trail the owner reads."""
    await require(session, actor, instance, Action.JOIN_SUPPORT)
    existing = _membership(instance, actor)
    if existing is not None:
        return existing
    member = InstanceMember(instance_id=instance.id, user=actor, role=MemberRole.SUPPORT)
    instance.members.append(member)
    record(session, instance, actor, "support-joined",
           reason[:500] if isinstance(reason, str) else "")
    return member


async def support_instances(session: AsyncSession, who: Principal, query: str = "",
                            page: Page | None = None) -> tuple[list[Instance], int]:
    """One page (default: the first) of the instances support staff may find, newest
    first: all (ADMIN, SUPPORT) or their instruments' (IS); and how many in all."""
    if not (who.is_admin or Role.SUPPORT in who.roles
            or Role.INSTRUMENT_SCIENTIST in who.roles):
        raise RequestError("support access is for admins, IT support and instrument "
                           "scientists", 403)
    page = page or Page()
    stmt = select(Instance).where(Instance.status != InstanceStatus.DELETED)
    if not (who.is_admin or Role.SUPPORT in who.roles):
        # The policy's rule for instrument scientists, in SQL so that pages are exact;
        # every row is still checked with the policy below.
        stmt = stmt.where(Instance.id.in_(
            select(InstanceExperiment.instance_id)
            .join(Experiment, Experiment.id == InstanceExperiment.experiment_id)
            .join(Instrument, Instrument.id == Experiment.instrument_id)
            .where(Instrument.name.in_(sorted(who.instruments)))))
    if query:
        stmt = stmt.where(Instance.name.ilike(f"%{query}%") | Instance.uid.startswith(query))
    stmt = stmt.order_by(Instance.created_at.desc(), Instance.id.desc())
    rows = (await session.scalars(page.apply(stmt))).all()
    return [i for i in rows if authorize(who, access_of(i), Action.VIEW)], \
        await count(session, stmt)

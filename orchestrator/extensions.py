"""What owners and admins may do with an instance's lifetime: shorten it, ask for more time,
accept or refuse such requests.

Like :mod:`orchestrator.lifecycle`, these functions validate, write the change with its
audit event and its notifications in the caller's transaction, and leave the commit to the
caller (who then calls ``LifetimeService.deliver_soon``). Pages and API share them, so both
refuse the same things with the same messages.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator import notify
from orchestrator.db import begin_write
from orchestrator.errors import RequestError
from orchestrator.lifetime import LifetimeService
from orchestrator.models import (
    ExtensionRequest,
    ExtensionStatus,
    Instance,
    InstanceEvent,
    InstanceStatus,
    Role,
    Target,
    User,
)

REASON_MAX = 2000
S = ExtensionStatus


def parse_time(value: object) -> dt.datetime:
    """An ISO 8601 date-time; without a zone it is UTC. Returns naive UTC."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError("give the date as ISO 8601 text, e.g. 2026-12-01T18:00 (UTC)")
    text = value.strip().replace("Z", "+00:00").replace(" ", "T")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RequestError(f"{value!r} is not an ISO 8601 date-time "
                           "(e.g. 2026-12-01T18:00)") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when


def _days(value: object, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError("days must be a number")
    try:
        days = float(value)
    except ValueError:
        raise RequestError(f"days must be a number, not {value!r}") from None
    if not math.isfinite(days) or days <= 0 or days > maximum:
        raise RequestError(f"days must be above 0 and at most {maximum:g}")
    return days


def _live(instance: Instance) -> None:
    if instance.target is Target.DELETED or instance.status is InstanceStatus.DELETED:
        raise RequestError("the instance is being deleted", 409)


def _owner_or_admin(user: User, instance: Instance, what: str) -> None:
    if user.id != instance.owner_id and Role.ADMIN not in user.role_names:
        raise RequestError(f"only the owner may {what}", 403)


async def shorten(session: AsyncSession, user: User, instance: Instance, when: object,
                  service: LifetimeService) -> dt.datetime:
    """Bring the termination date forward to ``when`` (owner or admin); it must lie in the
    future and before the current date. Returns the new date; the caller commits."""
    _owner_or_admin(user, instance, "shorten the lifetime")
    _live(instance)
    new = parse_time(when)
    now = service.clock()
    if new <= now:
        raise RequestError("the new termination date must be in the future "
                           "(to end the instance now, delete it)")
    if instance.termination_date is not None and new >= instance.termination_date:
        raise RequestError(f"the new date must come before the current one "
                           f"({instance.termination_date:%Y-%m-%d %H:%M} UTC); "
                           "ask for an extension to get more time")
    old = instance.termination_date
    instance.termination_date = new
    session.add(InstanceEvent(instance_id=instance.id, user_id=user.id,
                              kind="lifetime-shortened", created_at=now,
                              detail=f"{old:%Y-%m-%d %H:%M} -> {new:%Y-%m-%d %H:%M} UTC"
                              if old else f"-> {new:%Y-%m-%d %H:%M} UTC"))
    return new


async def request_extension(session: AsyncSession, user: User, instance: Instance, *,
                            days: object, reason: object, service: LifetimeService
                            ) -> ExtensionRequest:
    """Record the owner's request for ``days`` more, with a reason; accepted at once when
    the owner's role allows (``ATRIUM_EXTENSION_AUTO_ACCEPT_DAYS``), else left to admins,
    who are emailed. One pending request per instance. The caller commits."""
    if user.id != instance.owner_id:
        raise RequestError("only the owner may ask for an extension", 403)
    _live(instance)
    policy = service.policy
    amount = _days(days, policy.extension_max_days)
    if not isinstance(reason, str) or not reason.strip():
        raise RequestError("say why the instance needs more time (reason)")
    if len(reason) > REASON_MAX:
        raise RequestError(f"the reason is {len(reason)} characters long; at most {REASON_MAX}")
    if instance.termination_date is None:
        raise RequestError("the instance has no termination date to extend", 409)
    await begin_write(session)
    await session.execute(select(Instance.id).where(Instance.id == instance.id)
                          .with_for_update())
    if await session.scalar(select(ExtensionRequest.id).where(
            ExtensionRequest.instance_id == instance.id, ExtensionRequest.status == S.PENDING)):
        raise RequestError("a request for this instance is already waiting for an admin", 409)
    now = service.clock()
    request = ExtensionRequest(instance_id=instance.id, requester_id=user.id, days=amount,
                               reason=reason.strip(), status=S.PENDING, created_at=now,
                               old_termination=instance.termination_date)
    session.add(request)
    await session.flush()
    session.add(InstanceEvent(instance_id=instance.id, user_id=user.id,
                              kind="extension-requested", created_at=now,
                              detail=f"+{amount:g} days: {reason.strip()}"[:2000]))
    auto = policy.auto_accept(user.role_names, amount)
    if auto:
        _accept(session, request, instance, None, amount, "", now)
        await _notify_owner(session, request, instance, user, service)
    for admin in await notify.admins(session):
        await notify.enqueue(
            session, service.mailer, key=f"extension-requested:{request.id}:{admin.id}",
            kind="extension-requested", template="extension_requested", now=now, user=admin,
            instance_id=instance.id,
            context=dict(admin=admin.label, requester=user.label, name=instance.name,
                         days=amount, reason=request.reason, auto=auto,
                         old_termination=request.old_termination,
                         new_termination=request.new_termination,
                         admin_url=service.url("/admin/lifetime")))
    return request


def _accept(session: AsyncSession, request: ExtensionRequest, instance: Instance,
            admin: User | None, days: float, comment: str, now: dt.datetime) -> None:
    assert instance.termination_date is not None
    request.status = S.ACCEPTED
    request.auto = admin is None
    request.decided_by_id = admin.id if admin else None
    request.decided_at = now
    request.comment = comment
    request.granted_days = days
    request.old_termination = instance.termination_date
    request.new_termination = instance.termination_date + dt.timedelta(days=days)
    instance.termination_date = request.new_termination
    session.add(InstanceEvent(
        instance_id=instance.id, user_id=admin.id if admin else None,
        kind="extension-accepted", created_at=now,
        detail=f"+{days:g} days{' (automatically)' if admin is None else ''}: ends "
               f"{request.new_termination:%Y-%m-%d %H:%M} UTC"
               + (f"; {comment}" if comment else "")))


async def _notify_owner(session: AsyncSession, request: ExtensionRequest, instance: Instance,
                        owner: User | None, service: LifetimeService) -> None:
    accepted = request.status is S.ACCEPTED
    admin = await session.get(User, request.decided_by_id) if request.decided_by_id else None
    await notify.enqueue(
        session, service.mailer, key=f"extension-decided:{request.id}",
        kind="extension-decided", template="extension_decided", now=service.clock(),
        user=owner, instance_id=instance.id,
        context=dict(owner=owner.label if owner else "", name=instance.name,
                     days=request.granted_days or request.days, accepted=accepted,
                     decided_by=admin.label if admin else "", auto=request.auto,
                     comment=request.comment, old_termination=request.old_termination,
                     new_termination=request.new_termination,
                     url=service.url(f"/instances/{instance.uid}")))


async def decide(session: AsyncSession, admin: User, request_id: int, *, accept: bool,
                 service: LifetimeService, days: object = None, comment: object = ""
                 ) -> ExtensionRequest:
    """An admin accepts (for the requested days, or ``days``) or refuses a pending request;
    the owner is emailed. Accepting moves the termination date by that many days. The
    caller commits."""
    if Role.ADMIN not in admin.role_names:
        raise RequestError("only admins decide on extension requests", 403)
    if not isinstance(comment, str) or len(comment) > REASON_MAX:
        raise RequestError(f"the comment must be text of at most {REASON_MAX} characters")
    await begin_write(session)
    request = await session.scalar(select(ExtensionRequest).where(
        ExtensionRequest.id == request_id).with_for_update(of=ExtensionRequest))
    if request is None:
        raise RequestError("no such extension request", 404)
    if request.status is not S.PENDING:
        raise RequestError(f"the request was already {request.status.value.lower()}", 409)
    instance = await session.scalar(select(Instance).where(Instance.id == request.instance_id)
                                    .with_for_update(of=Instance))
    assert instance is not None
    _live(instance)
    now = service.clock()
    if accept:
        granted = request.days if days in (None, "") else _days(
            days, service.policy.extension_max_days)
        _accept(session, request, instance, admin, granted, comment.strip(), now)
    else:
        request.status = S.REFUSED
        request.decided_by_id = admin.id
        request.decided_at = now
        request.comment = comment.strip()
        session.add(InstanceEvent(instance_id=instance.id, user_id=admin.id,
                                  kind="extension-refused", created_at=now,
                                  detail=comment.strip() or "refused"))
    await _notify_owner(session, request, instance, await session.get(User, instance.owner_id),
                        service)
    return request


async def requests_of(session: AsyncSession, instance_id: int | None = None,
                      status: ExtensionStatus | None = None, limit: int = 200
                      ) -> Sequence[ExtensionRequest]:
    """Extension requests, newest first (of one instance, or of one status)."""
    query = select(ExtensionRequest).order_by(ExtensionRequest.id.desc()).limit(limit)
    if instance_id is not None:
        query = query.where(ExtensionRequest.instance_id == instance_id)
    if status is not None:
        query = query.where(ExtensionRequest.status == status)
    return (await session.scalars(query)).unique().all()


async def pending_requests(session: AsyncSession) -> Sequence[ExtensionRequest]:
    """Pending requests of live instances, the most urgent (soonest end) first."""
    rows = (await session.scalars(
        select(ExtensionRequest).join(Instance, Instance.id == ExtensionRequest.instance_id)
        .where(ExtensionRequest.status == S.PENDING, Instance.target != Target.DELETED)
        .order_by(Instance.termination_date, ExtensionRequest.id))).unique().all()
    return rows


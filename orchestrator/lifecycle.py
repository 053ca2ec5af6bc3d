"""What people may ask of instances: launch them, start/stop/reboot/delete them.

These functions validate the request, write the desired state (``target``) and an audit
event, and leave the backend work to the reconciler. They are used by the pages and the REST
API alike, so both refuse the same things with the same messages.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator import metrics
from orchestrator.errors import RequestError
from orchestrator.lifetime_policy import LifetimePolicy
from orchestrator.models import (
    Experiment,
    ExperimentMember,
    Instance,
    InstanceEvent,
    InstanceMember,
    InstanceSecret,
    InstanceStatus,
    MemberRole,
    Plan,
    Role,
    Target,
    User,
    utcnow,
)
from quotas.admission import admit_launch
from quotas.flavours import launch_refusal, may_offer
from sharing.access import access_of, principal_for
from sharing.policy import Action, authorize

NAME_MAX = 100
_NAME_RE = re.compile(r"^[\w][\w .,:()+@-]*$")


def new_uid() -> str:
    return secrets.token_hex(6)


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise RequestError("give the instance a name")
    name = name.strip()
    if len(name) > NAME_MAX:
        raise RequestError(f"the name is {len(name)} characters long; at most {NAME_MAX}")
    if not _NAME_RE.match(name):
        raise RequestError("the name may contain letters, digits, spaces and . , : ( ) + @ - _")
    return name


async def experiments_of(session: AsyncSession, user: User) -> Sequence[Experiment]:
    rows = await session.scalars(
        select(Experiment)
        .join(ExperimentMember, ExperimentMember.experiment_id == Experiment.id)
        .where(ExperimentMember.user_id == user.id)
        .order_by(Experiment.start_date.desc(), Experiment.proposal)
    )
    return rows.all()


async def launchable_plans(session: AsyncSession, user: User,
                           backends: Sequence[str] | None = None) -> Sequence[Plan]:
    """Enabled plans on enabled backends, of images that are not deprecated and visible
    (hidden images: admins only), before flavour limits."""
    rows = (await session.scalars(select(Plan).where(Plan.enabled).order_by(Plan.id))).all()
    admin = Role.ADMIN in user.role_names
    return [p for p in rows
            if (p.image.visible or admin) and not p.image.deprecated
            and (backends is None or p.backend in backends)]


async def plans_for(session: AsyncSession, user: User,
                    backends: Sequence[str] | None = None) -> Sequence[Plan]:
    """Plans ``user`` may launch: :func:`launchable_plans` whose flavour is open to the
    user's roles or to an instrument of one of the user's experiments."""
    instruments = {e.instrument.name for e in await experiments_of(session, user)
                   if e.instrument is not None}
    return [p for p in await launchable_plans(session, user, backends)
            if may_offer(p.flavour, user.role_names, instruments)]


async def launch(session: AsyncSession, user: User, *, name: object, plan_id: object,
                 experiment_ids: object, backends: Sequence[str], quota: int,
                 now: Callable[[], dt.datetime] = utcnow,
                 lifetime: LifetimePolicy | None = None) -> Instance:
    """Validate and record a launch (status BUILDING, target RUNNING); commit is the caller's.

    The termination date follows ``lifetime`` (default: the built-in rules): the owner's
    role's lifetime, capped by the flavour's and by the quota policies' maximum.

    Refuses plans whose flavour is reserved for other roles or instruments (403) and launches
    beyond the user's quota (409; ``quota`` is the default number of instances). Admission
    locks the user until the caller commits, so concurrent launches cannot overrun it.
    """
    name = validate_name(name)
    if not isinstance(plan_id, int) or isinstance(plan_id, bool):
        raise RequestError("plan_id must be the id of a plan (an integer)")
    plan = next((p for p in await launchable_plans(session, user, backends)
                 if p.id == plan_id), None)
    if plan is None:
        raise RequestError(f"unknown plan {plan_id}", 404)
    if not isinstance(experiment_ids, list) or not all(
        isinstance(e, int) and not isinstance(e, bool) for e in experiment_ids
    ):
        raise RequestError("experiment_ids must be a list of experiment ids (integers)")
    mine = {e.id: e for e in await experiments_of(session, user)}
    foreign = [e for e in experiment_ids if e not in mine]
    if foreign:
        raise RequestError(
            f"you are not a member of experiment(s) {', '.join(map(str, foreign))}", 403
        )
    chosen = [mine[e] for e in dict.fromkeys(experiment_ids)]
    refused = launch_refusal(plan.flavour, user.role_names,
                             {e.instrument.name for e in chosen if e.instrument is not None})
    if refused:
        raise RequestError(refused, 403)
    try:
        limits = await admit_launch(session, user, plan, quota)
    except RequestError:
        metrics.QUOTA_REFUSALS.labels(plan.backend).inc()
        raise
    instance = Instance(uid=new_uid(), name=name, owner=user, plan=plan, backend=plan.backend,
                        target=Target.RUNNING, status=InstanceStatus.BUILDING,
                        progress="Waiting for the orchestrator", experiments=chosen)
    instance.termination_date = (lifetime or LifetimePolicy()).termination_at_launch(
        now(), user.role_names, plan.flavour.name, limits.lifetime_hours)
    instance.members.append(InstanceMember(user=user, role=MemberRole.OWNER))
    instance.secret = InstanceSecret(jupyter_token=secrets.token_urlsafe(32),
                                     vnc_password=secrets.token_urlsafe(6)[:8])
    session.add(instance)
    await session.flush()
    metrics.launched(plan, plan.backend)
    record(session, instance, user, "launched",
           f"plan {plan.image.name} on {plan.flavour.name}, experiments "
           + (", ".join(e.proposal for e in instance.experiments) or "none"))
    return instance


ACTIONS: dict[str, tuple[Action, Target | None]] = {
    "start": (Action.CONTROL, Target.RUNNING),
    "stop": (Action.CONTROL, Target.STOPPED),
    "reboot": (Action.CONTROL, None),
    "delete": (Action.DELETE, Target.DELETED),
}


async def request_action(session: AsyncSession, user: User, instance: Instance,
                         action: str) -> Instance:
    """Record that ``user`` wants ``action`` on ``instance``; commit is the caller's."""
    if action not in ACTIONS:
        raise RequestError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", 404)
    needed, target = ACTIONS[action]
    decision = authorize(await principal_for(session, user), access_of(instance), needed)
    if not decision:
        raise RequestError(decision.reason, decision.status)
    if instance.target is Target.DELETED:
        raise RequestError("the instance is being deleted", 409)
    if action == "reboot":
        if instance.status not in (InstanceStatus.ACTIVE, InstanceStatus.PARTIALLY_ACTIVE,
                                   InstanceStatus.ERROR):
            raise RequestError(f"only a running instance can be rebooted; it is "
                               f"{instance.status.value}", 409)
        instance.reboot_requested = True
    elif target is not None:
        instance.target = target
    if action == "start" and instance.status is InstanceStatus.ERROR:
        instance.reboot_requested = True  # retry from an error
    record(session, instance, user, action)
    return instance


def record(session: AsyncSession, instance: Instance, user: User | None, kind: str,
           detail: str = "") -> None:
    session.add(InstanceEvent(instance_id=instance.id, user_id=user.id if user else None,
                              kind=kind, detail=detail[:2000]))

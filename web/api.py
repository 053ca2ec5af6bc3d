"""The REST API under /api/v1 (described by /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator import lifecycle
from orchestrator.announce import Change
from orchestrator.errors import RequestError
from orchestrator.models import (
    Experiment,
    Instance,
    InstanceEvent,
    InstanceMember,
    InstanceStatus,
    Plan,
    User,
)
from orchestrator.paging import count
from sharing.access import access_of
from sharing.policy import Action, Principal, authorize, member_role
from web.base import ApiHandler
from web.openapi import openapi_document


def iso(value: Any) -> str | None:
    return value.isoformat() + "Z" if value is not None else None


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "email": user.email,
            "name": user.label, "roles": sorted(user.role_names)}


def experiment_json(e: Experiment) -> dict[str, Any]:
    return {"id": e.id, "proposal": e.proposal, "title": e.title,
            "instrument": e.instrument.name if e.instrument else None,
            "start_date": e.start_date.isoformat() if e.start_date else None,
            "end_date": e.end_date.isoformat() if e.end_date else None}


def plan_json(p: Plan) -> dict[str, Any]:
    return {"id": p.id, "backend": p.backend, "preset": p.preset,
            "image": {"id": p.image.id, "name": p.image.name, "version": p.image.version,
                      "description": p.image.description, "icon": p.image.icon,
                      "protocols": p.image.protocols},
            "flavour": {"id": p.flavour.id, "name": p.flavour.name, "cpus": p.flavour.cpus,
                        "memory_mb": p.flavour.memory_mb, "gpus": p.flavour.gpus}}


def instance_json(i: Instance, viewer: Principal) -> dict[str, Any]:
    """An instance as its members see it: never its secrets or backend internals."""
    role = member_role(viewer, access_of(i))
    return {
        "uid": i.uid, "name": i.name, "backend": i.backend,
        "status": i.status.value, "target": i.target.value, "reason": i.status_reason,
        "progress": i.progress,
        "owner": {"username": i.owner.username, "name": i.owner.label},
        "role": role.value if role else None,
        "plan": plan_json(i.plan),
        "experiments": [experiment_json(e) for e in i.experiments],
        "protocols": i.plan.image.protocols, "ready_protocols": i.ready_protocols,
        "urls": {"page": f"/instances/{i.uid}", "lab": f"/instances/{i.uid}/lab/"},
        "members": [{"username": m.user.username, "role": m.role.value} for m in i.members],
        "created_at": iso(i.created_at), "activated_at": iso(i.activated_at),
        "deleted_at": iso(i.deleted_at), "termination_date": iso(i.termination_date),
    }


async def visible_instance(session: AsyncSession, who: Principal, uid: str,
                           action: Action = Action.VIEW) -> Instance:
    """The instance ``uid`` if ``who`` may do ``action`` on it; 404/403 otherwise."""
    instance = await session.scalar(select(Instance).where(Instance.uid == uid))
    if instance is None:
        raise RequestError("no such instance", 404)
    decision = authorize(who, access_of(instance), action)
    if not decision:
        raise RequestError(decision.reason, decision.status)
    return instance


class MeHandler(ApiHandler):
    async def get(self) -> None:
        self.require_user()
        async with self.portal.db.session() as s:
            self.send(user_json(await self.load_user(s)))


class ExperimentsHandler(ApiHandler):
    async def get(self) -> None:
        self.require_user()
        async with self.portal.db.session() as s:
            user = await self.load_user(s)
            self.send_list([experiment_json(e)
                            for e in await lifecycle.experiments_of(s, user)])


class PlansHandler(ApiHandler):
    async def get(self) -> None:
        self.require_user()
        async with self.portal.db.session() as s:
            user = await self.load_user(s)
            plans = await lifecycle.plans_for(s, user, self.portal.settings.backends)
            self.send_list([plan_json(p) for p in plans])


class InstancesHandler(ApiHandler):
    async def get(self) -> None:
        who = self.require_user()
        page = self.page()
        query = (select(Instance)
                 .join(InstanceMember, InstanceMember.instance_id == Instance.id)
                 .where(InstanceMember.user_id == who.user_id,
                        Instance.status != InstanceStatus.DELETED)
                 .order_by(Instance.created_at.desc(), Instance.id.desc()))
        async with self.portal.db.session() as s:
            rows = (await s.scalars(page.apply(query))).unique().all()
            total = await count(s, query)
            self.send_page([instance_json(i, who) for i in rows], total, page)

    async def post(self) -> None:
        who = self.require_user()
        body = self.json_body()
        async with self.portal.db.session() as s:
            user = await self.load_user(s)
            instance = await lifecycle.launch(
                s, user, name=body.get("name"), plan_id=body.get("plan_id"),
                experiment_ids=body.get("experiment_ids", []),
                backends=self.portal.settings.backends, quota=self.portal.settings.default_quota,
                lifetime=self.portal.lifetime.policy if self.portal.lifetime else None)
            await s.commit()
            uid = instance.uid
        self.portal.reconciler.kick(uid)
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            self.set_header("Location", f"/api/v1/instances/{uid}")
            self.send(instance_json(instance, who), 201)


class InstanceHandler(ApiHandler):
    async def get(self, uid: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            self.send(instance_json(await visible_instance(s, who, uid), who))

    async def delete(self, uid: str) -> None:
        await self._act(uid, "delete")

    async def _act(self, uid: str, action: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            await lifecycle.request_action(s, await self.load_user(s), instance, action)
            await self.portal.commit(s, Change("instance", uid), kick=uid)
        async with self.portal.db.session() as s:
            self.send(instance_json(await visible_instance(s, who, uid), who), 202)


class InstanceActionHandler(InstanceHandler):
    async def post(self, uid: str, action: str) -> None:
        await self._act(uid, action)


class InstanceEventsHandler(ApiHandler):
    async def get(self, uid: str) -> None:
        who = self.require_user()
        page = self.page()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid, Action.READ_AUDIT)
            query = (select(InstanceEvent).where(InstanceEvent.instance_id == instance.id)
                     .order_by(InstanceEvent.id))
            events = (await s.scalars(page.apply(query))).all()
            total = await count(s, query)
            self.send_page([{"at": iso(e.created_at), "kind": e.kind, "detail": e.detail,
                             "user": e.user.username if e.user else None} for e in events],
                           total, page)


class OpenApiHandler(ApiHandler):
    async def prepare(self) -> None:
        pass  # public document

    def get(self) -> None:
        self.send(openapi_document())


ID = r"([0-9a-f]{1,32})"

API_ROUTES: list[tuple[str, type]] = [
    (r"/api/v1/me", MeHandler),
    (r"/api/v1/experiments", ExperimentsHandler),
    (r"/api/v1/plans", PlansHandler),
    (r"/api/v1/instances", InstancesHandler),
    (rf"/api/v1/instances/{ID}", InstanceHandler),
    (rf"/api/v1/instances/{ID}/events", InstanceEventsHandler),
    (rf"/api/v1/instances/{ID}/(\w+)", InstanceActionHandler),
    (r"/api/v1/openapi.json", OpenApiHandler),
]

"""The lifetime REST API: deadlines, shortening, extension requests and their decisions.

* ``GET/PATCH /api/v1/instances/<uid>/lifetime`` - an instance's deadlines and warning;
  the owner (or an admin) brings the termination date forward.
* ``GET/POST /api/v1/instances/<uid>/extensions`` - its extension requests; the owner asks.
* ``GET /api/v1/lifetime/warnings`` - the caller's instances to be deleted soon (banner).
* ``GET /api/v1/lifetime/extensions``, ``POST /api/v1/lifetime/extensions/<id>``,
  ``GET /api/v1/lifetime/upcoming`` - admins: requests, decisions, upcoming deletions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from orchestrator import extensions
from orchestrator.errors import RequestError
from orchestrator.lifetime import LIVE, LifetimeService
from orchestrator.lifetime_policy import Deadline
from orchestrator.models import ExtensionRequest, ExtensionStatus, Instance, InstanceMember
from web.api import iso, visible_instance
from web.base import ApiHandler, BaseHandler


def service_of(handler: BaseHandler) -> LifetimeService:
    service = handler.portal.lifetime
    if service is None:
        raise RequestError("lifetime rules are not enabled in this process", 503)
    return service


def deadline_json(d: Deadline | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"kind": d.kind, "at": iso(d.at), "warn_from": iso(d.warn_from)}


def request_json(r: ExtensionRequest) -> dict[str, Any]:
    return {
        "id": r.id, "instance": {"uid": r.instance.uid, "name": r.instance.name},
        "requester": r.requester.username if r.requester else None,
        "days": r.days, "reason": r.reason, "status": r.status.value, "auto": r.auto,
        "created_at": iso(r.created_at), "decided_at": iso(r.decided_at),
        "decided_by": r.decided_by.username if r.decided_by else None,
        "comment": r.comment, "granted_days": r.granted_days,
        "old_termination": iso(r.old_termination), "new_termination": iso(r.new_termination),
    }


async def lifetime_json(handler: BaseHandler, instance: Instance) -> dict[str, Any]:
    service = service_of(handler)
    async with handler.portal.db.session() as s:
        requests = await extensions.requests_of(s, instance.id, limit=20)
    return {
        "uid": instance.uid, "termination_date": iso(instance.termination_date),
        "last_seen_at": iso(instance.last_seen_at),
        "deadlines": [deadline_json(d) for d in service.deadlines_of(instance)],
        "warning": deadline_json(service.banner_of(instance)),
        "extension_requests": [request_json(r) for r in requests],
    }


class InstanceLifetimeHandler(ApiHandler):
    async def get(self, uid: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
        self.send(await lifetime_json(self, instance))

    async def patch(self, uid: str) -> None:
        """Body ``{"termination_date": "2026-12-01T18:00:00Z"}``: bring the end forward."""
        who = self.require_user()
        body = self.json_body()
        service = service_of(self)
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            await extensions.shorten(s, await self.load_user(s), instance,
                                     body.get("termination_date"), service)
            await s.commit()
        self.portal.changed(uid)
        self.send(await lifetime_json(self, instance))


class InstanceExtensionsHandler(ApiHandler):
    async def get(self, uid: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            self.send_list([request_json(r)
                            for r in await extensions.requests_of(s, instance.id)])

    async def post(self, uid: str) -> None:
        """Body ``{"days": 7, "reason": "..."}``: the owner asks for more time."""
        who = self.require_user()
        body = self.json_body()
        service = service_of(self)
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            request = await extensions.request_extension(
                s, await self.load_user(s), instance, days=body.get("days"),
                reason=body.get("reason"), service=service)
            await s.commit()
            request_id = request.id
        service.deliver_soon()
        async with self.portal.db.session() as s:
            saved = await s.get(ExtensionRequest, request_id)
            assert saved is not None
            self.send(request_json(saved), 201)


class WarningsHandler(ApiHandler):
    async def get(self) -> None:
        """The caller's live instances whose warning window has begun (the banner)."""
        who = self.require_user()
        service = service_of(self)
        async with self.portal.db.session() as s:
            rows = (await s.scalars(
                select(Instance).join(InstanceMember, InstanceMember.instance_id == Instance.id)
                .where(InstanceMember.user_id == who.user_id, LIVE)
                .order_by(Instance.id))).unique().all()
        found = []
        for instance in rows:
            banner = service.banner_of(instance)
            if banner is not None:
                found.append({"uid": instance.uid, "name": instance.name,
                              "owner": instance.owner.username,
                              "mine": instance.owner_id == who.user_id,
                              "warning": deadline_json(banner)})
        self.send_list(found)


class AdminApi(ApiHandler):
    async def prepare(self) -> None:
        await super().prepare()
        who = self.require_user()
        if not who.is_admin:
            raise RequestError("for admins only (the ADMIN role)", 403)


class ExtensionsHandler(AdminApi):
    async def get(self) -> None:
        """``?status=PENDING|ACCEPTED|REFUSED|CANCELLED`` (default: all), newest first."""
        raw = self.get_argument("status", "").upper()
        if raw and raw not in ExtensionStatus.__members__:
            raise RequestError(f"status must be one of {', '.join(ExtensionStatus)}")
        async with self.portal.db.session() as s:
            found = await extensions.requests_of(
                s, status=ExtensionStatus(raw) if raw else None)
            self.send_list([request_json(r) for r in found])


class ExtensionDecisionHandler(AdminApi):
    async def post(self, request_id: str) -> None:
        """Body ``{"decision": "accept"|"refuse", "days": N (optional), "comment": "..."}``."""
        body = self.json_body()
        decision = body.get("decision")
        if decision not in ("accept", "refuse"):
            raise RequestError('decision must be "accept" or "refuse"')
        service = service_of(self)
        async with self.portal.db.session() as s:
            request = await extensions.decide(
                s, await self.load_user(s), int(request_id), accept=decision == "accept",
                service=service, days=body.get("days"), comment=body.get("comment") or "")
            await s.commit()
            uid = request.instance.uid
        service.deliver_soon()
        self.portal.changed(uid)
        async with self.portal.db.session() as s:
            saved = await s.get(ExtensionRequest, int(request_id))
            assert saved is not None
            self.send(request_json(saved))


class UpcomingHandler(AdminApi):
    async def get(self) -> None:
        """``?days=7``: live instances with a deadline within that many days."""
        try:
            days = float(self.get_argument("days", "7"))
        except ValueError:
            raise RequestError("days must be a number") from None
        service = service_of(self)
        async with self.portal.db.session() as s:
            found = await service.upcoming(s, dt.timedelta(days=max(0.0, min(days, 3650))))
        self.send_list([{"uid": row.uid, "name": row.name, "deadline": deadline_json(d),
                    "termination_date": iso(row.termination_date),
                    "last_seen_at": iso(row.last_seen_at)} for row, d in found])


UID = r"([0-9a-f]{1,32})"

LIFETIME_API_ROUTES: list[tuple[str, type]] = [
    (rf"/api/v1/instances/{UID}/lifetime", InstanceLifetimeHandler),
    (rf"/api/v1/instances/{UID}/extensions", InstanceExtensionsHandler),
    (r"/api/v1/lifetime/warnings", WarningsHandler),
    (r"/api/v1/lifetime/extensions", ExtensionsHandler),
    (r"/api/v1/lifetime/extensions/([0-9]{1,12})", ExtensionDecisionHandler),
    (r"/api/v1/lifetime/upcoming", UpcomingHandler),
]

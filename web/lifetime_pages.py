"""Lifetime in the pages: the instance page's lifetime panel and banner (context built
here, form posted here), and the admin view of upcoming deletions and extension requests at
``/admin/lifetime`` (ADMIN role only).

Forms post back and redirect (with the XSRF token); refusals come back as a message on the
page. The rules are those of the API (:mod:`orchestrator.extensions`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

import tornado.web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator import extensions
from orchestrator.errors import RequestError
from orchestrator.lifetime_policy import describe
from orchestrator.models import Instance, SchedulerLease, User
from orchestrator.scheduler import LEASE_NAME, job_runs
from sharing.policy import Principal
from web.api import visible_instance
from web.base import BaseHandler
from web.lifetime_api import service_of


async def lifetime_context(handler: BaseHandler, session: AsyncSession, instance: Instance,
                           who: Principal) -> dict[str, Any] | None:
    """What ``_lifetime.html`` shows on the instance page (None when the lifetime rules are
    not running in this process)."""
    service = handler.portal.lifetime
    if service is None:
        return None
    requests = await extensions.requests_of(session, instance.id, limit=10)
    banner = service.banner_of(instance)
    return {
        "deadlines": service.deadlines_of(instance), "banner": banner,
        "banner_text": describe(banner) if banner else "",
        "requests": requests,
        "pending": next((r for r in requests if r.status.value == "PENDING"), None),
        "is_owner": who.user_id == instance.owner_id, "is_admin": who.is_admin,
        "max_days": service.policy.extension_max_days, "now": service.clock(),
        "error": handler.get_argument("lifetime_error", ""),
        "notice": handler.get_argument("lifetime_notice", ""),
    }


class InstanceLifetimeForm(BaseHandler):
    """``POST /instances/<uid>/lifetime``: ``action=shorten`` (``termination_date``) or
    ``action=extend`` (``days``, ``reason``)."""

    @tornado.web.authenticated
    async def post(self, uid: str) -> None:
        who = self.principal
        assert who is not None
        service = service_of(self)
        action = self.get_argument("action", "")
        try:
            async with self.portal.db.session() as s:
                instance = await visible_instance(s, who, uid)
                user = await self.load_user(s)
                if action == "shorten":
                    new = await extensions.shorten(
                        s, user, instance, self.get_argument("termination_date", ""), service)
                    notice = f"The instance now ends on {new:%Y-%m-%d %H:%M} UTC."
                elif action == "extend":
                    request = await extensions.request_extension(
                        s, user, instance, days=self.get_argument("days", ""),
                        reason=self.get_argument("reason", ""), service=service)
                    notice = ("Extension granted." if request.status.value == "ACCEPTED"
                              else "Your request was sent to the admins.")
                else:
                    raise RequestError("unknown action; shorten or extend")
                await s.commit()
        except RequestError as err:
            if err.status in (401, 404):
                raise
            self.redirect(f"/instances/{uid}?{urlencode({'lifetime_error': err.message})}")
            return
        service.deliver_soon()
        self.portal.changed(uid)
        self.redirect(f"/instances/{uid}?{urlencode({'lifetime_notice': notice})}")


class AdminLifetimePage(BaseHandler):
    """``/admin/lifetime``: upcoming deletions, pending requests (accept/refuse), recent
    decisions and the scheduler's state."""

    async def prepare(self) -> None:
        await super().prepare()
        if self.principal is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect(f"/login?{urlencode({'next': self.request.uri or '/'})}")
                return
            raise RequestError("log in first", 401)
        if not self.principal.is_admin:
            raise RequestError("the admin pages are for admins (the ADMIN role)", 403)

    async def get(self) -> None:
        service = service_of(self)
        try:
            days = max(1.0, min(float(self.get_argument("days", "7")), 365.0))
        except ValueError:
            days = 7.0
        async with self.portal.db.session() as s:
            upcoming = await service.upcoming(s, dt.timedelta(days=days))
            pending = await extensions.pending_requests(s)
            decided = [r for r in await extensions.requests_of(s, limit=30)
                       if r.status.value != "PENDING"]
            lease = await s.get(SchedulerLease, LEASE_NAME)
            owner_ids = {row.owner_id for row, _ in upcoming}
            owners = dict((await s.execute(
                select(User.id, User.username).where(User.id.in_(owner_ids)))).all()) \
                if owner_ids else {}
        self.render_page("lifetime_admin.html", upcoming=upcoming, pending=pending,
                         decided=decided, lease=lease, runs=await job_runs(self.portal.db),
                         days=days, now=service.clock(), owners=owners,
                         error=self.get_argument("error", ""),
                         notice=self.get_argument("notice", ""))

    async def post(self) -> None:
        service = service_of(self)
        decision = self.get_argument("decision", "")
        try:
            request_id = int(self.get_argument("request_id", ""))
        except ValueError:
            raise RequestError("request_id must be a number") from None
        try:
            if decision not in ("accept", "refuse"):
                raise RequestError("decision must be accept or refuse")
            async with self.portal.db.session() as s:
                request = await extensions.decide(
                    s, await self.load_user(s), request_id, accept=decision == "accept",
                    service=service, days=self.get_argument("days", "").strip() or None,
                    comment=self.get_argument("comment", "").strip())
                await s.commit()
                name, uid = request.instance.name, request.instance.uid
        except RequestError as err:
            self.redirect(f"/admin/lifetime?{urlencode({'error': err.message})}")
            return
        service.deliver_soon()
        self.portal.changed(uid)
        done = "accepted" if decision == "accept" else "refused"
        self.redirect(f"/admin/lifetime?{urlencode({'notice': f'Request for {name} {done}.'})}")


LIFETIME_PAGE_ROUTES: list[tuple[str, type]] = [
    (r"/instances/([0-9a-f]{1,32})/lifetime", InstanceLifetimeForm),
    (r"/admin/lifetime", AdminLifetimePage),
]

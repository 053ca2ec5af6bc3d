"""Sharing in the pages: the members panel's forms, invitation links, access requests,
the support list. The same functions as the API (sharing.members) do the work."""

from __future__ import annotations

from typing import Any

import tornado.escape
import tornado.web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.announce import Change
from orchestrator.errors import RequestError
from orchestrator.models import Instance, InstanceStatus
from sharing import members as sharing
from sharing.access import access_of
from sharing.models import AccessRequest
from sharing.policy import Action, Principal, authorize
from web.api import visible_instance
from web.base import BaseHandler
from web.revocation import rotate_exposed_secrets

UID = r"([0-9a-f]{1,32})"


async def sharing_context(s: AsyncSession, instance: Instance, who: Principal
                          ) -> dict[str, Any]:
    """What the instance page shows about sharing to ``who``."""
    manage = bool(authorize(who, access_of(instance), Action.MANAGE_MEMBERS))
    return {"manage": manage,
            "requests": await sharing.pending_requests(s, instance) if manage else []}


async def outsider_page(handler: BaseHandler, s: AsyncSession, uid: str) -> bool:
    """For a logged-in non-member with the instance's address: the request-access page.

    Returns False when there is no such instance (the caller answers 404)."""
    instance = await s.scalar(select(Instance).where(
        Instance.uid == uid, Instance.status != InstanceStatus.DELETED))
    if instance is None or handler.principal is None:
        return False
    mine = (await s.scalars(select(AccessRequest).where(
        AccessRequest.instance_id == instance.id,
        AccessRequest.user_id == handler.principal.user_id)
        .order_by(AccessRequest.id.desc()).limit(1))).first()
    handler.set_status(403)
    handler.render_page("request_access.html", instance=instance, request_=mine)
    return True


class SharingForm(BaseHandler):
    """``POST /instances/<uid>/sharing`` with ``op`` = add, role, remove, invite, decide,
    unrestricted, request, join-support, leave."""

    @tornado.web.authenticated
    async def post(self, uid: str) -> None:
        op = self.get_argument("op", "")
        who = self.principal
        assert who is not None
        notice, rotate = "", False
        async with self.portal.db.session() as s:
            actor = await self.load_user(s)
            if op == "request":
                instance = await s.scalar(select(Instance).where(Instance.uid == uid))
                if instance is None:
                    raise RequestError("no such instance", 404)
                await sharing.request_access(s, actor, instance, self.get_argument("message", ""))
                await s.commit()
                self.redirect(f"/instances/{uid}")
                return
            instance = await visible_instance(s, who, uid)
            if op == "add":
                await sharing.add_member(s, actor, instance, self.get_argument("user", ""),
                                         self.get_argument("role", ""))
            elif op == "role":
                before = await sharing.change_role(s, actor, instance,
                                                   self.get_argument("username"),
                                                   self.get_argument("role", ""))
                rotate = sharing.read_secrets(before, sharing.grantable_role(
                    self.get_argument("role", "")))
            elif op in ("remove", "leave"):
                before = await sharing.remove_member(
                    s, actor, instance, self.get_argument("username", actor.username))
                rotate = sharing.read_secrets(before, None)
            elif op == "invite":
                token, _ = await sharing.create_invitation(
                    s, actor, instance, self.get_argument("role", ""),
                    _hours(self.get_argument("hours", "72")))
                notice = f"{self.portal.settings.public_url}/invitations/{token}"
            elif op == "decide":
                await sharing.decide_request(
                    s, actor, instance, int(self.get_argument("request_id", "0")),
                    self.get_argument("decision", "") == "accept",
                    self.get_argument("role", "USER"))
            elif op == "unrestricted":
                await sharing.set_unrestricted(s, actor, instance,
                                               self.get_argument("value", "") == "on")
            elif op == "join-support":
                await sharing.join_as_support(s, actor, instance,
                                              self.get_argument("reason", ""))
            else:
                raise RequestError(f"unknown sharing operation {op!r}")
            await self.portal.commit(s, Change("instance", uid))
        if rotate:
            await rotate_exposed_secrets(self.portal, uid)
        if op == "leave":
            self.redirect("/")
        elif notice:
            self.redirect(f"/instances/{uid}?invitation={tornado.escape.url_escape(notice)}")
        else:
            self.redirect(f"/instances/{uid}")


def _hours(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise RequestError("the link's lifetime must be a number of hours") from None


class InvitationPage(BaseHandler):
    @tornado.web.authenticated
    async def get(self, token: str) -> None:
        self.render_page("invitation.html", token=token)

    @tornado.web.authenticated
    async def post(self, token: str) -> None:
        async with self.portal.db.session() as s:
            instance = await sharing.accept_invitation(s, await self.load_user(s), token)
            await s.commit()
            uid = instance.uid
        await self.portal.revalidate(uid)
        self.redirect(f"/instances/{uid}")


class SupportPage(BaseHandler):
    """Support staff find instances to help with, and join them as SUPPORT."""

    @tornado.web.authenticated
    async def get(self) -> None:
        who = self.principal
        assert who is not None
        query = self.get_argument("q", "").strip()
        page = self.page_args()
        async with self.portal.db.session() as s:
            found, total = await sharing.support_instances(s, who, query, page)
            self.render_page("support.html", instances=found, query=query,
                             pager=self.pager(page, total, len(found)))


SHARING_PAGES: list[tuple[str, type]] = [
    (rf"/instances/{UID}/sharing", SharingForm),
    (r"/invitations/([\w-]+)", InvitationPage),
    (r"/support", SupportPage),
]



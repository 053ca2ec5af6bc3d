"""REST endpoints for sharing: members, invitations, access requests, support access."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.announce import Change
from orchestrator.errors import RequestError
from orchestrator.models import Instance, InstanceStatus
from orchestrator.paging import count
from sharing import members as sharing
from sharing.models import AccessRequest
from sharing.policy import Action
from web.api import instance_json, iso, visible_instance
from web.base import ApiHandler
from web.revocation import rotate_exposed_secrets

ID = r"([0-9a-f]{1,32})"


def member_json(m: Any) -> dict[str, Any]:
    return {"username": m.user.username, "name": m.user.label, "role": m.role.value}


def request_json(r: AccessRequest, uid: str = "") -> dict[str, Any]:
    return {"id": r.id, "instance": uid or None, "username": r.user.username,
            "name": r.user.label, "message": r.message, "status": r.status.value,
            "role": r.role.value if r.role else None, "created_at": iso(r.created_at),
            "decided_at": iso(r.decided_at)}


class SharingHandler(ApiHandler):
    """Common steps: load the instance the caller may see, act, commit and announce (open
    connections are re-checked on every replica)."""

    async def changed(self, uid: str) -> None:
        await self.portal.revalidate(uid)

    async def commit(self, session: AsyncSession, uid: str) -> None:
        await self.portal.commit(session, Change("instance", uid))


class MembersHandler(SharingHandler):
    async def get(self, uid: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            self.send_list([member_json(m) for m in instance.members])

    async def post(self, uid: str) -> None:
        who = self.require_user()
        body = self.json_body()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            member = await sharing.add_member(s, await self.load_user(s), instance,
                                              body.get("user"), body.get("role"))
            await s.commit()
            data = member_json(member)
        await self.changed(uid)
        self.send(data, 201)


class MemberHandler(SharingHandler):
    async def patch(self, uid: str, username: str) -> None:
        who = self.require_user()
        body = self.json_body()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            before = await sharing.change_role(s, await self.load_user(s), instance, username,
                                               body.get("role"))
            data = [member_json(m) for m in instance.members]
            after = next(m.role for m in instance.members if m.user.username == username)
            await self.commit(s, uid)
        if sharing.read_secrets(before, after):
            await rotate_exposed_secrets(self.portal, uid)
        self.send(data)

    async def delete(self, uid: str, username: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            before = await sharing.remove_member(s, await self.load_user(s), instance, username)
            await self.commit(s, uid)
        if sharing.read_secrets(before, None):
            await rotate_exposed_secrets(self.portal, uid)
        self.set_status(204)
        self.finish()


class AccessSettingsHandler(SharingHandler):
    """``PATCH {"unrestricted_member_access": bool}``."""

    async def patch(self, uid: str) -> None:
        who = self.require_user()
        body = self.json_body()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            await sharing.set_unrestricted(s, await self.load_user(s), instance,
                                           body.get("unrestricted_member_access"))
            await s.commit()
            data = instance_json(instance, who)
        await self.changed(uid)
        self.send(data)


class InvitationsHandler(SharingHandler):
    async def post(self, uid: str) -> None:
        who = self.require_user()
        body = self.json_body()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            token, invitation = await sharing.create_invitation(
                s, await self.load_user(s), instance, body.get("role"),
                body.get("expires_in_hours", 72))
            await s.commit()
            self.send({"url": f"{self.portal.settings.public_url}/invitations/{token}",
                       "token": token, "role": invitation.role.value,
                       "expires_at": iso(invitation.expires_at)}, 201)


class AcceptInvitationHandler(SharingHandler):
    async def post(self, token: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            instance = await sharing.accept_invitation(s, await self.load_user(s), token)
            await s.commit()
            uid = instance.uid
        await self.changed(uid)
        async with self.portal.db.session() as s:
            self.send(instance_json(await visible_instance(s, who, uid), who))


class AccessRequestsHandler(SharingHandler):
    async def get(self, uid: str) -> None:
        who = self.require_user()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid, Action.MANAGE_MEMBERS)
            self.send_list([request_json(r, uid)
                            for r in await sharing.pending_requests(s, instance)])

    async def post(self, uid: str) -> None:
        """Any logged-in user who has the instance's address may ask to join."""
        self.require_user()
        body = self.json_body()
        async with self.portal.db.session() as s:
            instance = await s.scalar(select(Instance).where(
                Instance.uid == uid, Instance.status != InstanceStatus.DELETED))
            if instance is None:
                raise RequestError("no such instance", 404)
            request = await sharing.request_access(s, await self.load_user(s), instance,
                                                   body.get("message", ""))
            await s.commit()
            self.send(request_json(request, uid), 201)


class AccessRequestHandler(SharingHandler):
    """``POST {"decision": "accept"|"refuse", "role": "USER"|"GUEST"}``."""

    async def post(self, uid: str, request_id: str) -> None:
        who = self.require_user()
        body = self.json_body()
        decision = body.get("decision")
        if decision not in ("accept", "refuse"):
            raise RequestError("decision must be accept or refuse")
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            request = await sharing.decide_request(s, await self.load_user(s), instance,
                                                   int(request_id), decision == "accept",
                                                   body.get("role", "USER"))
            await s.commit()
            data = request_json(request, uid)
        await self.changed(uid)
        self.send(data)


class MyAccessRequestsHandler(SharingHandler):
    """The caller's own requests, so requesters see the owner's answer."""

    async def get(self) -> None:
        who = self.require_user()
        page = self.page()
        query = (select(AccessRequest, Instance.uid)
                 .join(Instance, Instance.id == AccessRequest.instance_id)
                 .where(AccessRequest.user_id == who.user_id)
                 .order_by(AccessRequest.id.desc()))
        async with self.portal.db.session() as s:
            rows = (await s.execute(page.apply(query))).all()
            total = await count(s, query)
            self.send_page([request_json(r, uid) for r, uid in rows], total, page)


class SupportJoinHandler(SharingHandler):
    async def post(self, uid: str) -> None:
        who = self.require_user()
        body = self.json_body()
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            await sharing.join_as_support(s, await self.load_user(s), instance,
                                          body.get("reason", ""))
            await s.commit()
        await self.changed(uid)
        async with self.portal.db.session() as s:
            self.send(instance_json(await visible_instance(s, who, uid), who), 201)


class SupportInstancesHandler(SharingHandler):
    """Instances support staff may find: all (ADMIN, SUPPORT) or their instruments' (IS)."""

    async def get(self) -> None:
        who = self.require_user()
        page = self.page()
        async with self.portal.db.session() as s:
            found, total = await sharing.support_instances(
                s, who, self.get_argument("q", "").strip(), page)
            self.send_page([instance_json(i, who) for i in found], total, page)


SHARING_ROUTES: list[tuple[str, type]] = [
    (rf"/api/v1/instances/{ID}/members", MembersHandler),
    (rf"/api/v1/instances/{ID}/members/([\w.@-]+)", MemberHandler),
    (rf"/api/v1/instances/{ID}/sharing", AccessSettingsHandler),
    (rf"/api/v1/instances/{ID}/invitations", InvitationsHandler),
    (r"/api/v1/invitations/([\w-]+)", AcceptInvitationHandler),
    (rf"/api/v1/instances/{ID}/access-requests", AccessRequestsHandler),
    (rf"/api/v1/instances/{ID}/access-requests/(\d+)", AccessRequestHandler),
    (r"/api/v1/access-requests", MyAccessRequestsHandler),
    (rf"/api/v1/instances/{ID}/support", SupportJoinHandler),
    (r"/api/v1/support/instances", SupportInstancesHandler),
]

"""The HTML pages: login, dashboard (experiments, instances, launch form), instance page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import tornado.web
from sqlalchemy import select

from orchestrator import lifecycle
from orchestrator.errors import RequestError
from orchestrator.models import (
    Instance,
    InstanceEvent,
    InstanceMember,
    InstanceStatus,
    User,
    utcnow,
)
from sharing.access import access_of
from sharing.policy import Action, authorize, member_role
from web.api import visible_instance
from web.auth import SESSION_COOKIE, SESSION_DAYS
from web.base import BaseHandler


def safe_next(target: str | None) -> str:
    """Only same-site paths are followed after login (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class LoginHandler(BaseHandler):
    async def get(self) -> None:
        async with self.portal.db.session() as s:
            users = (await s.scalars(select(User).order_by(User.username))).all() \
                if self.portal.settings.demo_mode else []
        self.render_page("login.html", users=users, next=safe_next(self.get_argument("next", "/")))

    async def post(self) -> None:
        if not self.portal.settings.demo_mode:
            raise RequestError("the development login is off (it works in demo mode only)", 403)
        username = self.get_argument("username", "")
        async with self.portal.db.session() as s:
            user = await s.scalar(select(User).where(User.username == username))
            if user is None:
                raise RequestError(f"no demo user {username!r}", 400)
            user.last_login_at = utcnow()
            await s.commit()
            self.set_signed_cookie(SESSION_COOKIE, str(user.id), expires_days=SESSION_DAYS,
                                   httponly=True, samesite="Lax",
                                   secure=self.request.protocol == "https")
        self.redirect(safe_next(self.get_argument("next", "/")))


class LogoutHandler(BaseHandler):
    def post(self) -> None:
        self.clear_cookie(SESSION_COOKIE)
        self.redirect("/login")


class DashboardHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self._render()

    async def _render(self, error: str = "", form: Mapping[str, object] | None = None) -> None:
        who = self.principal
        assert who is not None
        async with self.portal.db.session() as s:
            user = await self.load_user(s)
            experiments = await lifecycle.experiments_of(s, user)
            plans = await lifecycle.plans_for(s, user, self.portal.settings.backends)
            instances = (await s.scalars(
                select(Instance)
                .join(InstanceMember, InstanceMember.instance_id == Instance.id)
                .where(InstanceMember.user_id == who.user_id,
                       Instance.status != InstanceStatus.DELETED)
                .order_by(Instance.created_at.desc()))).unique().all()
            rows = [(i, member_role(who, access_of(i))) for i in instances]
            self.render_page("dashboard.html", user=user, experiments=experiments, plans=plans,
                             instances=rows, error=error, form=form or {},
                             quota=self.portal.settings.default_quota)

    @tornado.web.authenticated
    async def post(self) -> None:
        form = {"name": self.get_argument("name", ""), "plan_id": self.get_argument("plan_id", ""),
                "experiment_ids": self.get_arguments("experiment_ids")}
        try:
            plan_id = int(str(form["plan_id"])) if form["plan_id"] else None
            experiment_ids = [int(e) for e in self.get_arguments("experiment_ids")]
        except ValueError:
            plan_id, experiment_ids = None, []
        try:
            async with self.portal.db.session() as s:
                user = await self.load_user(s)
                instance = await lifecycle.launch(
                    s, user, name=form["name"], plan_id=plan_id if plan_id else "none",
                    experiment_ids=experiment_ids, backends=self.portal.settings.backends,
                    quota=self.portal.settings.default_quota)
                await s.commit()
                uid = instance.uid
        except RequestError as err:
            self.set_status(err.status)
            await self._render(error=err.message, form=form)
            return
        self.portal.reconciler.kick(uid)
        self.redirect(f"/instances/{uid}")


class InstancePage(BaseHandler):
    @tornado.web.authenticated
    async def get(self, uid: str) -> None:
        who = self.principal
        assert who is not None
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            access = access_of(instance)
            events: Sequence[InstanceEvent] = []
            if authorize(who, access, Action.READ_AUDIT):
                events = (await s.scalars(select(InstanceEvent)
                                          .where(InstanceEvent.instance_id == instance.id)
                                          .order_by(InstanceEvent.id.desc()).limit(50))).all()
            can = {a.value: bool(authorize(who, access, a)) for a in Action}
            self.render_page("instance.html", instance=instance, events=events, can=can,
                             role=member_role(who, access))

    @tornado.web.authenticated
    async def post(self, uid: str) -> None:
        action = self.get_argument("action", "")
        who = self.principal
        assert who is not None
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            await lifecycle.request_action(s, await self.load_user(s), instance, action)
            await s.commit()
        self.portal.changed(uid)
        self.portal.reconciler.kick(uid)
        self.redirect("/" if action == "delete" else f"/instances/{uid}")


class LabSlashRedirect(BaseHandler):
    def get(self, uid: str) -> None:
        self.redirect(f"/instances/{uid}/lab/", permanent=True)


class HealthHandler(BaseHandler):
    async def prepare(self) -> None:
        pass

    async def get(self) -> None:
        async with self.portal.db.session() as s:
            await s.execute(select(1))
        self.finish({"status": "ok"})

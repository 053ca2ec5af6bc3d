"""The HTML pages: login, dashboard (experiments, instances, launch form), instance page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import tornado.web
from sqlalchemy import select

from orchestrator import lifecycle, metrics
from orchestrator.announce import Change
from orchestrator.errors import RequestError
from orchestrator.models import (
    Instance,
    InstanceEvent,
    InstanceMember,
    InstanceStatus,
    User,
    utcnow,
)
from quotas.admission import quota_status
from quotas.flavours import reserved_for
from quotas.usage import usage_by_experiment
from sharing.access import access_of
from sharing.policy import Action, authorize, member_role
from web.api import visible_instance
from web.base import BaseHandler
from web.lifetime_pages import lifetime_context
from web.sharing_pages import outsider_page, sharing_context


def safe_next(target: str | None) -> str:
    """Only same-site paths are followed after login (no open redirects; browsers read a
    backslash as a slash, so ``/\\evil.example`` would leave the site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def render_login(handler: BaseHandler, *, next_url: str = "/", error: str = "",
                       notice: str = "") -> None:
    """The login page: the provider's button when OIDC is configured, the demo users in
    demo mode only, and the outcome of the last attempt (``error``/``notice``)."""
    portal = handler.portal
    users: Sequence[User] = []
    if portal.settings.demo_mode:
        async with portal.db.session() as s:
            users = (await s.scalars(select(User).order_by(User.username))).all()
    handler.render_page("login.html", users=users, next=next_url, error=error, notice=notice,
                        oidc_label=portal.oidc.label if portal.oidc else "")


class LoginHandler(BaseHandler):
    async def get(self) -> None:
        await render_login(self, next_url=safe_next(self.get_argument("next", "/")))

    async def post(self) -> None:
        """The development login (demo mode only): log in as any user, no password."""
        if not self.portal.settings.demo_mode:
            raise RequestError("the development login is off (it works in demo mode only)", 403)
        username = self.get_argument("username", "")
        async with self.portal.db.session() as s:
            user = await s.scalar(select(User).where(User.username == username))
            if user is None:
                metrics.LOGIN_FAILURES.labels("demo").inc()
                raise RequestError(f"no demo user {username!r}", 400)
            user.last_login_at = utcnow()
            await s.commit()
            user_id = user.id
        await self.portal.auth.start_session(self, user_id, "demo")
        self.redirect(safe_next(self.get_argument("next", "/")))


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        """End the Atrium login; for an OIDC login, the provider session too (the provider
        then sends the browser to /logout/done)."""
        row = await self.portal.auth.end_session(self)
        if row is not None and row.method == "oidc" and self.portal.oidc is not None:
            url = await self.portal.oidc.logout_url(row.id_token)
            if url:
                self.redirect(url)
                return
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
            # Remaining quota, and what the user's instances hold per experiment.
            quota = await quota_status(s, user, self.portal.settings.default_quota)
            in_use = await usage_by_experiment(s, [e.id for e in experiments], user.id)
            self.render_page("dashboard.html", user=user, experiments=experiments, plans=plans,
                             instances=rows, error=error, form=form or {}, quota=quota,
                             in_use=in_use, reserved_for=reserved_for)

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
                    quota=self.portal.settings.default_quota,
                    lifetime=self.portal.lifetime.policy if self.portal.lifetime else None)
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
            try:
                instance = await visible_instance(s, who, uid)
            except RequestError as err:
                if err.status == 404 and await outsider_page(self, s, uid):
                    return
                raise
            access = access_of(instance)
            events: Sequence[InstanceEvent] = []
            if authorize(who, access, Action.READ_AUDIT):
                events = (await s.scalars(select(InstanceEvent)
                                          .where(InstanceEvent.instance_id == instance.id)
                                          .order_by(InstanceEvent.id.desc()).limit(50))).all()
            can = {a.value: bool(authorize(who, access, a)) for a in Action}
            self.render_page("instance.html", instance=instance, events=events, can=can,
                             role=member_role(who, access),
                             sharing=await sharing_context(s, instance, who),
                             lifetime=await lifetime_context(self, s, instance, who),
                             invitation=self.get_argument("invitation", ""))

    @tornado.web.authenticated
    async def post(self, uid: str) -> None:
        action = self.get_argument("action", "")
        who = self.principal
        assert who is not None
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid)
            await lifecycle.request_action(s, await self.load_user(s), instance, action)
            await self.portal.commit(s, Change("instance", uid), kick=uid)
        self.redirect("/" if action == "delete" else f"/instances/{uid}")


class LabSlashRedirect(BaseHandler):
    def get(self, uid: str) -> None:
        self.redirect(f"/instances/{uid}/lab/", permanent=True)


class HealthHandler(BaseHandler):
    async def prepare(self) -> None:
        pass

    async def get(self) -> None:
        """``{"status": "ok", "jobs": {job: runs finished by this process}}`` once the
        database answers; the counts let a test wait for a flush or a sweep to have run."""
        async with self.portal.db.session() as s:
            await s.execute(select(1))
        self.finish({"status": "ok", "jobs": dict(self.portal.job_runs)})

"""The admin pages under /admin (ADMIN role only): instances, images, flavours, plans,
quotas, users, usage and the catalogue file.

Every form posts back to its page (with the XSRF token); a refused change re-renders the
page with the message and what was typed, and changes nothing. The rules are those of the
CLI and the REST API (orchestrator.catalog, orchestrator.admin, quotas.*).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator import admin, catalog, lifecycle
from orchestrator.announce import Change
from orchestrator.catalog_spec import (
    BACKENDS,
    PROTOCOLS,
    QUOTA_LIMITS,
    parse_catalog,
    parse_flavour,
    parse_image,
    parse_one,
    parse_quota,
)
from orchestrator.catalog_spec import load_yaml as load_catalog_yaml
from orchestrator.errors import RequestError
from orchestrator.models import (
    Flavour,
    Image,
    Instance,
    InstanceStatus,
    Instrument,
    Plan,
    QuotaPolicy,
    QuotaScope,
    Role,
    User,
)
from quotas.accounting import DIMENSIONS, account, parse_time
from quotas.policies import all_policies, groups_of
from quotas.usage import QuotaStatus
from web.base import BaseHandler
from web.pages import safe_next


class AdminPage(BaseHandler):
    """Anonymous visitors are sent to the login page; non-admins get 403."""

    section = ""

    async def prepare(self) -> None:
        await super().prepare()
        if self.principal is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect(f"/login?{urlencode({'next': self.request.uri or '/admin'})}")
                return
            raise RequestError("log in first", 401)
        if not self.principal.is_admin:
            raise RequestError("the admin pages are for admins (the ADMIN role)", 403)

    def render_admin(self, template: str, **context: Any) -> None:
        context.setdefault("error", "")
        context.setdefault("notice", self.get_argument("notice", ""))
        self.render_page(template, section=self.section, **context)

    async def fail(self, err: RequestError, **context: Any) -> None:
        """Re-render the page with the refusal (and the typed form) at its status."""
        self.set_status(err.status)
        await self.show(error=err.message, **context)

    async def show(self, **context: Any) -> None:
        raise NotImplementedError

    def done(self, notice: str, **args: str) -> None:
        self.redirect(f"/admin/{self.section}?{urlencode({'notice': notice, **args})}")

    def arg(self, name: str) -> str:
        return self.get_argument(name, "").strip()

    def number_arg(self, name: str) -> object:
        """A number typed in a form; text that is no number goes on to the validator,
        which says what is wrong with it; empty is None (not set)."""
        raw = self.arg(name)
        if not raw:
            return None
        for kind in (int, float):
            try:
                return kind(raw)
            except ValueError:
                pass
        return raw


class AdminHome(AdminPage):
    def get(self) -> None:
        self.redirect("/admin/instances")


# --- instances --------------------------------------------------------------------------

class AdminInstancesPage(AdminPage):
    section = "instances"

    async def get(self) -> None:
        await self.show()

    async def show(self, **context: Any) -> None:
        args = {k: self.get_argument(k) for k in ("status", "owner", "backend", "plan_id", "q",
                                                  "include_deleted") if self.get_argument(k, "")}
        page = self.page_args()
        async with self.portal.db.session() as s:
            try:
                found, total = await admin.find_instances(s, admin.InstanceFilter.of(args),
                                                          page)
            except RequestError as err:
                (found, total), context["error"] = ([], 0), err.message
            plans = (await s.scalars(select(Plan).order_by(Plan.id))).all()
            self.render_admin("admin_instances.html", instances=found, filters=args,
                              pager=self.pager(page, total, len(found)),
                              plans=plans, statuses=list(InstanceStatus),
                              backends=BACKENDS, actions=list(lifecycle.ACTIONS), **context)

    async def post(self) -> None:
        uid, action = self.arg("uid"), self.arg("action")
        back = safe_next(self.get_argument("next", "/admin/instances"))
        try:
            async with self.portal.db.session() as s:
                instance = await s.scalar(select(Instance).where(Instance.uid == uid))
                if instance is None:
                    raise RequestError(f"no instance {uid}", 404)
                await lifecycle.request_action(s, await self.load_user(s), instance, action)
                await self.portal.commit(s, Change("instance", uid), kick=uid)
        except RequestError as err:
            await self.fail(err)
            return
        self.redirect(back)


# --- images -----------------------------------------------------------------------------

def image_form(i: Image | None) -> dict[str, Any]:
    if i is None:
        return {"protocols": ["jupyter"], "visible": True}
    return {"id": i.id, "name": i.name, "version": i.version, "description": i.description,
            "icon": i.icon, "protocols": list(i.protocols), "boot_template": i.boot_template,
            "visible": i.visible, "deprecated": i.deprecated,
            **{f"ref_{b}": i.backend_refs.get(b, "") for b in BACKENDS}}


class AdminImagesPage(AdminPage):
    section = "images"

    async def get(self) -> None:
        await self.show()

    async def show(self, form: dict[str, Any] | None = None, **context: Any) -> None:
        async with self.portal.db.session() as s:
            images = (await s.scalars(select(Image).order_by(Image.name, Image.version))).all()
            if form is None:
                edit = self.get_argument("edit", "")
                form = image_form(await s.get(Image, int(edit)) if edit.isdigit() else None)
            self.render_admin("admin_images.html", images=images, form=form,
                              protocols=PROTOCOLS, backends=BACKENDS, **context)

    def typed(self) -> dict[str, Any]:
        return {"id": self.arg("id"), "name": self.arg("name"), "version": self.arg("version"),
                "description": self.arg("description"), "icon": self.arg("icon"),
                "protocols": self.get_arguments("protocols"),
                "boot_template": self.get_argument("boot_template", ""),
                "visible": bool(self.get_argument("visible", "")),
                "deprecated": bool(self.get_argument("deprecated", "")),
                **{f"ref_{b}": self.arg(f"ref_{b}") for b in BACKENDS}}

    async def post(self) -> None:
        form = self.typed()
        try:
            async with self.portal.db.session() as s:
                image = await s.get(Image, int(form["id"])) if form["id"] else None
                if self.arg("op") == "delete" and image is not None:
                    await catalog.delete_image(s, image)
                    await s.commit()
                    self.done(f"image {image.name} {image.version} deleted")
                    return
                data = {k: form[k] for k in ("name", "version", "description", "icon",
                                             "protocols", "boot_template", "visible",
                                             "deprecated")}
                data["backend_refs"] = {b: form[f"ref_{b}"] for b in BACKENDS
                                        if form[f"ref_{b}"]}
                spec = parse_one(parse_image, data, "image")
                image = await catalog.save_image(s, spec, image)
                await s.commit()
        except RequestError as err:
            await self.fail(err, form=form)
            return
        self.done(f"image {spec.name} {spec.version} saved")


# --- flavours ---------------------------------------------------------------------------

def flavour_form(f: Flavour | None) -> dict[str, Any]:
    if f is None:
        return {"cpus": 1, "memory_mb": 2048, "gpus": 0, "limit_roles": []}
    return {"id": f.id, "name": f.name, "cpus": f"{f.cpus:g}", "memory_mb": f.memory_mb,
            "gpus": f.gpus, "limit_roles": list(f.limit_roles),
            "limit_instruments": ", ".join(f.limit_instruments),
            **{f"ref_{b}": f.backend_refs.get(b, "") for b in BACKENDS}}


class AdminFlavoursPage(AdminPage):
    section = "flavours"

    async def get(self) -> None:
        await self.show()

    async def show(self, form: dict[str, Any] | None = None, **context: Any) -> None:
        async with self.portal.db.session() as s:
            flavours = (await s.scalars(select(Flavour).order_by(Flavour.cpus, Flavour.name))
                        ).all()
            instruments = (await s.scalars(select(Instrument.name).order_by(Instrument.name))
                           ).all()
            if form is None:
                edit = self.get_argument("edit", "")
                form = flavour_form(await s.get(Flavour, int(edit)) if edit.isdigit() else None)
            self.render_admin("admin_flavours.html", flavours=flavours, form=form,
                              roles=list(Role), instruments=instruments, backends=BACKENDS,
                              **context)

    async def post(self) -> None:
        form: dict[str, Any] = {
            "id": self.arg("id"), "name": self.arg("name"), "cpus": self.arg("cpus"),
            "memory_mb": self.arg("memory_mb"), "gpus": self.arg("gpus"),
            "limit_roles": self.get_arguments("limit_roles"),
            "limit_instruments": self.arg("limit_instruments"),
            **{f"ref_{b}": self.arg(f"ref_{b}") for b in BACKENDS}}
        try:
            async with self.portal.db.session() as s:
                flavour = await s.get(Flavour, int(form["id"])) if form["id"] else None
                if self.arg("op") == "delete" and flavour is not None:
                    await catalog.delete_flavour(s, flavour)
                    await s.commit()
                    self.done(f"flavour {flavour.name} deleted")
                    return
                data = {"name": form["name"], "cpus": self.number_arg("cpus"),
                        "memory_mb": self.number_arg("memory_mb"),
                        "gpus": self.number_arg("gpus") or 0,
                        "backend_refs": {b: form[f"ref_{b}"] for b in BACKENDS
                                         if form[f"ref_{b}"]},
                        "limits": {"roles": form["limit_roles"], "instruments": [
                            i.strip() for i in form["limit_instruments"].split(",")
                            if i.strip()]}}
                spec = parse_one(parse_flavour, data, "flavour")
                await catalog.save_flavour(s, spec, flavour)
                await s.commit()
        except RequestError as err:
            await self.fail(err, form=form)
            return
        self.done(f"flavour {spec.name} saved")


# --- plans ------------------------------------------------------------------------------

class AdminPlansPage(AdminPage):
    section = "plans"

    async def get(self) -> None:
        await self.show()

    async def show(self, form: dict[str, Any] | None = None, **context: Any) -> None:
        async with self.portal.db.session() as s:
            plans = (await s.scalars(select(Plan).order_by(Plan.id))).all()
            used = {plan_id: n for plan_id, n in await s.execute(
                select(Instance.plan_id, func.count()).group_by(Instance.plan_id))}
            images = (await s.scalars(select(Image).order_by(Image.name, Image.version))).all()
            flavours = (await s.scalars(select(Flavour).order_by(Flavour.cpus))).all()
            self.render_admin("admin_plans.html", plans=plans, used=used, images=images,
                              flavours=flavours, backends=BACKENDS,
                              form=form or {"backend": "local", "enabled": True}, **context)

    async def post(self) -> None:
        op = self.arg("op")
        image_id, flavour_id = self.arg("image_id"), self.arg("flavour_id")
        preset, enabled = bool(self.arg("preset")), bool(self.arg("enabled"))
        form = {"image_id": image_id, "flavour_id": flavour_id, "backend": self.arg("backend"),
                "preset": preset, "enabled": enabled}
        try:
            async with self.portal.db.session() as s:
                plan = await s.get(Plan, int(self.arg("id"))) if self.arg("id").isdigit() \
                    else None
                if op in ("delete", "enable", "disable", "preset") and plan is None:
                    raise RequestError("no such plan", 404)
                if op == "delete" and plan is not None:
                    label = catalog.plan_label(plan)
                    await catalog.delete_plan(s, plan)
                    notice = f"plan {label} deleted"
                elif op in ("enable", "disable", "preset") and plan is not None:
                    await catalog.save_plan(
                        s, image_id=plan.image_id, flavour_id=plan.flavour_id,
                        backend=plan.backend, preset=op == "preset" or plan.preset,
                        enabled={"enable": True, "disable": False}.get(op, plan.enabled),
                        plan=plan)
                    done = {"enable": "enabled", "disable": "disabled", "preset": "the preset"}
                    notice = f"plan {catalog.plan_label(plan)}: {done[op]}"
                else:
                    plan = await catalog.save_plan(
                        s, image_id=int(image_id) if image_id.isdigit() else None,
                        flavour_id=int(flavour_id) if flavour_id.isdigit() else None,
                        backend=self.arg("backend"), preset=preset, enabled=enabled)
                    notice = f"plan {catalog.plan_label(plan)} created"
                await s.commit()
        except RequestError as err:
            await self.fail(err, form=form)
            return
        self.done(notice)


# --- quotas -----------------------------------------------------------------------------

def quota_form(q: QuotaPolicy | None) -> dict[str, Any]:
    if q is None:
        return {"scope": "ROLE"}
    return {"id": q.id, "scope": q.scope.value, "subject": q.subject,
            **{k: "" if getattr(q, k) is None else f"{getattr(q, k):g}" for k in QUOTA_LIMITS}}


class AdminQuotasPage(AdminPage):
    section = "quotas"

    async def get(self) -> None:
        await self.show()

    async def show(self, form: dict[str, Any] | None = None, **context: Any) -> None:
        async with self.portal.db.session() as s:
            if form is None:
                edit = self.get_argument("edit", "")
                form = quota_form(await s.get(QuotaPolicy, int(edit)) if edit.isdigit()
                                  else None)
            self.render_admin("admin_quotas.html", policies=await all_policies(s), form=form,
                              scopes=list(QuotaScope), roles=list(Role), limits=QUOTA_LIMITS,
                              default_quota=self.portal.settings.default_quota, **context)

    async def post(self) -> None:
        form = {"id": self.arg("id"), "scope": self.arg("scope"), "subject": self.arg("subject"),
                **{k: self.arg(k) for k in QUOTA_LIMITS}}
        try:
            async with self.portal.db.session() as s:
                policy = await s.get(QuotaPolicy, int(form["id"])) if form["id"].isdigit() \
                    else None
                if self.arg("op") == "delete" and policy is not None:
                    await s.delete(policy)
                    await s.commit()
                    self.done("quota policy deleted")
                    return
                scope = form["scope"].lower()
                data: dict[str, Any] = {"default": True} if scope == "default" \
                    else {scope: form["subject"]}
                data |= {k: self.number_arg(k) for k in QUOTA_LIMITS}
                spec = parse_one(parse_quota, data, "quota")
                await catalog.save_quota(s, spec, policy)
                await s.commit()
        except RequestError as err:
            await self.fail(err, form=form)
            return
        self.done(f"quota policy for {catalog.quota_label(spec.scope, spec.subject)} saved")


# --- users ------------------------------------------------------------------------------

class AdminUsersPage(AdminPage):
    section = "users"

    async def get(self) -> None:
        await self.show()

    async def show(self, form: dict[str, Any] | None = None, **context: Any) -> None:
        page = self.page_args()
        async with self.portal.db.session() as s:
            rows, total = await admin.users_overview(s, self.portal.settings.default_quota,
                                                     self.get_argument("q", ""), page=page)
            context["pager"] = self.pager(page, total, len(rows))
            if form is None:
                edit = self.get_argument("edit", "")
                user = await s.get(User, int(edit)) if edit.isdigit() else None
                form = {} if user is None else {
                    "id": user.id, "username": user.username, "roles": sorted(user.role_names),
                    "groups": ", ".join(await groups_of(s, user.id))}
            self.render_admin("admin_users.html", rows=[(r, QuotaStatus(r.limits, r.usage))
                                                        for r in rows],
                              form=form, roles=list(Role), q=self.get_argument("q", ""),
                              **context)

    async def post(self) -> None:
        uid, groups = self.arg("id"), self.arg("groups")
        form = {"id": uid, "username": self.arg("username"),
                "roles": self.get_arguments("roles"), "groups": groups}
        try:
            async with self.portal.db.session() as s:
                user = await s.get(User, int(uid)) if uid.isdigit() else None
                if user is None:
                    raise RequestError("no such user", 404)
                await admin.set_roles_and_groups(
                    s, await self.load_user(s), user, roles=list(self.get_arguments("roles")),
                    groups=[g.strip() for g in groups.split(",") if g.strip()])
                username = user.username
                await self.portal.commit(s, Change("user", str(user.id)))
        except RequestError as err:
            await self.fail(err, form=form)
            return
        self.done(f"{username}: roles and groups saved")


# --- usage ------------------------------------------------------------------------------

class AdminUsagePage(AdminPage):
    section = "usage"

    async def get(self) -> None:
        await self.show()

    async def report(self, s: AsyncSession) -> Any:
        since = parse_time(self.get_argument("since", ""), "since")
        until = parse_time(self.get_argument("until", ""), "until")
        return await account(s, since=since, until=until)

    async def show(self, **context: Any) -> None:
        async with self.portal.db.session() as s:
            try:
                report = await self.report(s)
            except RequestError as err:
                self.set_status(err.status)
                context["error"] = err.message
                report = await account(s)
            page = self.page_args()
            rows, total = await admin.users_overview(s, self.portal.settings.default_quota,
                                                     page=page, in_use=True)
            context["pager"] = self.pager(page, total, len(rows))
            current = [(r, QuotaStatus(r.limits, r.usage)) for r in rows]
            self.render_admin("admin_usage.html", report=report, dimensions=DIMENSIONS,
                              current=current, since=self.get_argument("since", ""),
                              until=self.get_argument("until", ""),
                              csv_query=urlencode({k: self.get_argument(k) for k in
                                                   ("since", "until")
                                                   if self.get_argument(k, "")}), **context)


class AdminUsageCsv(AdminUsagePage):
    async def get(self) -> None:
        async with self.portal.db.session() as s:
            report = await self.report(s)
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", 'attachment; filename="atrium-usage.csv"')
        self.finish(report.csv())


# --- the catalogue file -----------------------------------------------------------------

class AdminCatalogPage(AdminPage):
    section = "catalog"

    async def get(self) -> None:
        await self.show()

    async def show(self, text: str | None = None, **context: Any) -> None:
        async with self.portal.db.session() as s:
            current = catalog.dump_catalog(await catalog.export_catalog(s))
        self.render_admin("admin_catalog.html", current=current,
                          text=current if text is None else text, **context)

    async def post(self) -> None:
        text = self.get_argument("catalog", "")
        dry_run, prune = bool(self.arg("dry_run")), bool(self.arg("prune"))
        try:
            spec = parse_catalog(load_catalog_yaml(text, "catalogue"), "catalogue")
            async with self.portal.db.session() as s:
                changes = await catalog.apply_spec(s, spec, prune=prune)
                if dry_run:
                    await s.rollback()
                else:
                    await s.commit()
        except RequestError as err:
            await self.fail(err, text=text, dry_run=dry_run, prune=prune)
            return
        await self.show(text=text, changes=[str(c) for c in changes], applied=not dry_run,
                        dry_run=dry_run, prune=prune)


class AdminCatalogYaml(AdminPage):
    async def get(self) -> None:
        async with self.portal.db.session() as s:
            text = catalog.dump_catalog(await catalog.export_catalog(s))
        self.set_header("Content-Type", "application/yaml; charset=UTF-8")
        self.set_header("Content-Disposition", 'attachment; filename="catalog.yaml"')
        self.finish(text)


ADMIN_PAGE_ROUTES: list[tuple[str, type]] = [
    (r"/admin/?", AdminHome),
    (r"/admin/instances", AdminInstancesPage),
    (r"/admin/images", AdminImagesPage),
    (r"/admin/flavours", AdminFlavoursPage),
    (r"/admin/plans", AdminPlansPage),
    (r"/admin/quotas", AdminQuotasPage),
    (r"/admin/users", AdminUsersPage),
    (r"/admin/usage", AdminUsagePage),
    (r"/admin/usage\.csv", AdminUsageCsv),
    (r"/admin/catalog", AdminCatalogPage),
    (r"/admin/catalog\.yaml", AdminCatalogYaml),
]

"""REST API for admins (under /api/v1/admin, ADMIN role only) and the caller's quota.

Catalogue objects are read and written in the catalogue file's format (see
orchestrator/catalog_spec.py), so what ``GET`` returns can be edited and sent back: ``PUT``
replaces an object (keys left out take their defaults), ``PATCH`` changes the keys given.
Admins act on any instance through the ordinary /api/v1/instances endpoints.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator import admin, catalog
from orchestrator.announce import Change
from orchestrator.catalog_spec import (
    CatalogError,
    parse_catalog,
    parse_flavour,
    parse_image,
    parse_one,
    parse_quota,
)
from orchestrator.catalog_spec import load_yaml as load_catalog_yaml
from orchestrator.errors import RequestError
from orchestrator.lifecycle import experiments_of
from orchestrator.models import Flavour, Image, Plan, QuotaPolicy, QuotaScope, User
from quotas.accounting import account, parse_time
from quotas.admission import quota_status
from quotas.policies import all_policies
from quotas.usage import QuotaStatus, Usage, usage_by_experiment
from web.api import experiment_json, instance_json, plan_json, user_json
from web.base import ApiHandler


def image_json(i: Image) -> dict[str, Any]:
    return {"id": i.id, "name": i.name, "version": i.version, "description": i.description,
            "icon": i.icon, "protocols": list(i.protocols),
            "backend_refs": dict(i.backend_refs), "boot_template": i.boot_template,
            "visible": i.visible, "deprecated": i.deprecated}


def flavour_json(f: Flavour) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "cpus": f.cpus, "memory_mb": f.memory_mb,
            "gpus": f.gpus, "backend_refs": dict(f.backend_refs),
            "limits": {"roles": list(f.limit_roles), "instruments": list(f.limit_instruments)}}


def admin_plan_json(p: Plan) -> dict[str, Any]:
    return {**plan_json(p), "image_id": p.image_id, "flavour_id": p.flavour_id,
            "enabled": p.enabled, "limits": flavour_json(p.flavour)["limits"]}


def quota_json(q: QuotaPolicy) -> dict[str, Any]:
    head: dict[str, Any] = {"default": True} if q.scope is QuotaScope.DEFAULT \
        else {q.scope.value.lower(): q.subject}
    return {"id": q.id, **head, "max_instances": q.max_instances, "max_cpus": q.max_cpus,
            "max_memory_mb": q.max_memory_mb, "max_gpus": q.max_gpus,
            "max_lifetime_hours": q.max_lifetime_hours}


def _body_for(current: dict[str, Any], body: dict[str, Any], method: str) -> dict[str, Any]:
    """PUT replaces, PATCH merges; the ``id`` is never part of the object's data."""
    data = {**current, **body} if method == "PATCH" else dict(body)
    data.pop("id", None)
    return data


class AdminApiHandler(ApiHandler):
    """Refuses anonymous callers (401) and callers without the ADMIN role (403)."""

    async def prepare(self) -> None:
        await super().prepare()
        who = self.require_user()
        if not who.is_admin:
            raise RequestError("this needs the ADMIN role", 403)

    async def object_or_404(self, s: AsyncSession, model: type[Any], oid: str) -> Any:
        obj = await s.get(model, int(oid))
        if obj is None:
            raise RequestError(f"no such {model.__name__.lower()} {oid}", 404)
        return obj


class AdminImagesHandler(AdminApiHandler):
    async def get(self) -> None:
        async with self.portal.db.session() as s:
            rows = await s.scalars(select(Image).order_by(Image.name, Image.version, Image.id))
            self.send_list([image_json(i) for i in rows])

    async def post(self) -> None:
        spec = parse_one(parse_image, _body_for({}, self.json_body(), "POST"), "image")
        async with self.portal.db.session() as s:
            image = await catalog.save_image(s, spec)
            await s.commit()
            self.send(image_json(image), 201)


class AdminImageHandler(AdminApiHandler):
    async def get(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            self.send(image_json(await self.object_or_404(s, Image, oid)))

    async def put(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            image = await self.object_or_404(s, Image, oid)
            data = _body_for(image_json(image), self.json_body(), self.request.method or "")
            image = await catalog.save_image(s, parse_one(parse_image, data, "image"), image)
            await s.commit()
            self.send(image_json(image))

    patch = put

    async def delete(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            await catalog.delete_image(s, await self.object_or_404(s, Image, oid))
            await s.commit()
        self.set_status(204)
        self.finish()


class AdminFlavoursHandler(AdminApiHandler):
    async def get(self) -> None:
        async with self.portal.db.session() as s:
            rows = await s.scalars(select(Flavour).order_by(Flavour.cpus, Flavour.name))
            self.send_list([flavour_json(f) for f in rows])

    async def post(self) -> None:
        spec = parse_one(parse_flavour, _body_for({}, self.json_body(), "POST"), "flavour")
        async with self.portal.db.session() as s:
            flavour = await catalog.save_flavour(s, spec)
            await s.commit()
            self.send(flavour_json(flavour), 201)


class AdminFlavourHandler(AdminApiHandler):
    async def get(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            self.send(flavour_json(await self.object_or_404(s, Flavour, oid)))

    async def put(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            flavour = await self.object_or_404(s, Flavour, oid)
            data = _body_for(flavour_json(flavour), self.json_body(), self.request.method or "")
            spec = parse_one(parse_flavour, data, "flavour")
            flavour = await catalog.save_flavour(s, spec, flavour)
            await s.commit()
            self.send(flavour_json(flavour))

    patch = put

    async def delete(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            await catalog.delete_flavour(s, await self.object_or_404(s, Flavour, oid))
            await s.commit()
        self.set_status(204)
        self.finish()


def _plan_args(data: dict[str, Any]) -> dict[str, Any]:
    preset, enabled = data.get("preset", False), data.get("enabled", True)
    if not isinstance(preset, bool) or not isinstance(enabled, bool):
        raise RequestError("preset and enabled must be true or false")
    backend = data.get("backend", "local")
    return {"image_id": data.get("image_id"), "flavour_id": data.get("flavour_id"),
            "backend": backend if isinstance(backend, str) else "", "preset": preset,
            "enabled": enabled}


class AdminPlansHandler(AdminApiHandler):
    async def get(self) -> None:
        async with self.portal.db.session() as s:
            rows = await s.scalars(select(Plan).order_by(Plan.id))
            self.send_list([admin_plan_json(p) for p in rows])

    async def post(self) -> None:
        args = _plan_args(self.json_body())
        async with self.portal.db.session() as s:
            plan = await catalog.save_plan(s, **args)
            await s.commit()
            self.send(admin_plan_json(plan), 201)


class AdminPlanHandler(AdminApiHandler):
    async def get(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            self.send(admin_plan_json(await self.object_or_404(s, Plan, oid)))

    async def put(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            plan = await self.object_or_404(s, Plan, oid)
            data = _body_for(admin_plan_json(plan), self.json_body(), self.request.method or "")
            plan = await catalog.save_plan(s, **_plan_args(data), plan=plan)
            await s.commit()
            self.send(admin_plan_json(plan))

    patch = put

    async def delete(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            await catalog.delete_plan(s, await self.object_or_404(s, Plan, oid))
            await s.commit()
        self.set_status(204)
        self.finish()


class AdminQuotasHandler(AdminApiHandler):
    async def get(self) -> None:
        async with self.portal.db.session() as s:
            self.send_list([quota_json(q) for q in await all_policies(s)])

    async def post(self) -> None:
        spec = parse_one(parse_quota, _body_for({}, self.json_body(), "POST"), "quota")
        async with self.portal.db.session() as s:
            policy = await catalog.save_quota(s, spec)
            await s.commit()
            self.send(quota_json(policy), 201)


class AdminQuotaHandler(AdminApiHandler):
    async def get(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            self.send(quota_json(await self.object_or_404(s, QuotaPolicy, oid)))

    async def put(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            policy = await self.object_or_404(s, QuotaPolicy, oid)
            current = quota_json(policy)
            body = self.json_body()
            if self.request.method == "PATCH" and {"user", "group", "role", "default"} & set(body):
                for key in ("user", "group", "role", "default"):
                    current.pop(key, None)  # a new scope replaces the old one
            data = _body_for({k: v for k, v in current.items() if v is not None}, body,
                             self.request.method or "")
            policy = await catalog.save_quota(s, parse_one(parse_quota, data, "quota"), policy)
            await s.commit()
            self.send(quota_json(policy))

    patch = put

    async def delete(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            await s.delete(await self.object_or_404(s, QuotaPolicy, oid))
            await s.commit()
        self.set_status(204)
        self.finish()


def overview_json(row: admin.UserOverview) -> dict[str, Any]:
    return {**user_json(row.user), "groups": row.groups,
            "quota": QuotaStatus(row.limits, row.usage).as_dict()}


class AdminUsersHandler(AdminApiHandler):
    async def get(self) -> None:
        page = self.page()
        async with self.portal.db.session() as s:
            rows, total = await admin.users_overview(s, self.portal.settings.default_quota,
                                                     self.get_argument("q", ""), page=page)
            self.send_page([overview_json(r) for r in rows], total, page)


class AdminUserHandler(AdminApiHandler):
    async def get(self, oid: str) -> None:
        async with self.portal.db.session() as s:
            user = await self.object_or_404(s, User, oid)
            self.send(overview_json(await admin.user_overview(
                s, user, self.portal.settings.default_quota)))

    async def patch(self, oid: str) -> None:
        """Set ``roles`` and/or ``groups`` (lists of names; keys left out are kept)."""
        body = self.json_body()
        async with self.portal.db.session() as s:
            user = await self.object_or_404(s, User, oid)
            actor = await self.load_user(s)
            await admin.set_roles_and_groups(s, actor, user, roles=body.get("roles"),
                                             groups=body.get("groups"))
            # Roles take effect at once, on every replica and on open connections.
            await self.portal.commit(s, Change("user", str(user.id)))
        await self.get(oid)


class AdminInstancesHandler(AdminApiHandler):
    async def get(self) -> None:
        who = self.require_user()
        args = {k: self.get_argument(k) for k in self.request.arguments}
        page = self.page()
        found = admin.InstanceFilter.of(args)
        async with self.portal.db.session() as s:
            rows, total = await admin.find_instances(s, found, page)
            self.send_page([instance_json(i, who) for i in rows], total, page)


class AdminUsageHandler(AdminApiHandler):
    """Accounting over [since, until): JSON, or CSV with ``?format=csv``."""

    async def get(self) -> None:
        since = parse_time(self.get_argument("since", ""), "since")
        until = parse_time(self.get_argument("until", ""), "until")
        async with self.portal.db.session() as s:
            report = await account(s, since=since, until=until)
        if self.get_argument("format", "") == "csv":
            self.set_header("Content-Type", "text/csv; charset=UTF-8")
            self.set_header("Content-Disposition", 'attachment; filename="atrium-usage.csv"')
            self.finish(report.csv())
            return
        self.send({"since": since.isoformat() if since else None,
                   "until": report.until.isoformat(), "by": {
            dim: [{"name": name, "instances": len(t.instances), "instance_hours": t.hours,
                   "vcpu_hours": t.vcpu_hours, "gpu_hours": t.gpu_hours,
                   "memory_gib_hours": t.memory_gib_hours} for name, t in report.rows(dim)]
            for dim in report.by}})


class AdminCatalogHandler(AdminApiHandler):
    """GET: the catalogue (YAML with ``?format=yaml``); POST: apply a YAML catalogue
    (``?dry_run=1`` reports the changes and rolls back, ``?prune=1`` removes the rest)."""

    async def get(self) -> None:
        async with self.portal.db.session() as s:
            doc = await catalog.export_catalog(s)
        if self.get_argument("format", "") == "yaml":
            self.set_header("Content-Type", "application/yaml; charset=UTF-8")
            self.finish(catalog.dump_catalog(doc))
            return
        self.send(doc)

    async def post(self) -> None:
        dry_run = self.get_argument("dry_run", "") in ("1", "true")
        prune = self.get_argument("prune", "") in ("1", "true")
        try:
            text = self.request.body.decode()
        except UnicodeDecodeError:
            raise CatalogError(["the catalogue must be UTF-8 text"]) from None
        spec = parse_catalog(load_catalog_yaml(text, "catalogue"), "catalogue")
        async with self.portal.db.session() as s:
            changes = await catalog.apply_spec(s, spec, prune=prune)
            if dry_run:
                await s.rollback()
            else:
                await self.portal.commit(s, Change("catalogue"))
        self.send({"applied": not dry_run, "changes": [str(c) for c in changes]})


class QuotaHandler(ApiHandler):
    """The caller's limits, current use and remaining quota, also per experiment."""

    async def get(self) -> None:
        self.require_user()
        async with self.portal.db.session() as s:
            user = await self.load_user(s)
            status = await quota_status(s, user, self.portal.settings.default_quota)
            experiments = await experiments_of(s, user)
            mine = await usage_by_experiment(s, [e.id for e in experiments], user.id)
            self.send({**status.as_dict(), "experiments": [
                {**experiment_json(e), "instances": u.instances, "cpus": u.cpus,
                 "memory_mb": u.memory_mb, "gpus": u.gpus}
                for e in experiments for u in [mine.get(e.id) or Usage()]]})


N = r"([0-9]{1,12})"

ADMIN_API_ROUTES: list[tuple[str, type]] = [
    (r"/api/v1/quota", QuotaHandler),
    (r"/api/v1/admin/images", AdminImagesHandler),
    (rf"/api/v1/admin/images/{N}", AdminImageHandler),
    (r"/api/v1/admin/flavours", AdminFlavoursHandler),
    (rf"/api/v1/admin/flavours/{N}", AdminFlavourHandler),
    (r"/api/v1/admin/plans", AdminPlansHandler),
    (rf"/api/v1/admin/plans/{N}", AdminPlanHandler),
    (r"/api/v1/admin/quotas", AdminQuotasHandler),
    (rf"/api/v1/admin/quotas/{N}", AdminQuotaHandler),
    (r"/api/v1/admin/users", AdminUsersHandler),
    (rf"/api/v1/admin/users/{N}", AdminUserHandler),
    (r"/api/v1/admin/instances", AdminInstancesHandler),
    (r"/api/v1/admin/usage", AdminUsageHandler),
    (r"/api/v1/admin/catalog", AdminCatalogHandler),
]

"""The image catalogue: images, flavours, plans (and quota policies), kept in the database.

* :func:`apply_spec` makes the database match a validated catalogue file and returns the
  changes, so ``atrium catalog apply`` can print a diff; applying the same file again changes
  nothing. A dry run is the same call, rolled back. With ``prune``, what a section of the
  file does not list is removed - unless something still refers to it: plans that instances
  were launched from are disabled instead, images still in use are deprecated.
* :func:`export_catalog` writes the database back in the same format (apply(export) is a
  no-op).
* ``save_*`` / ``delete_*`` edit one object (admin pages and API), with the same rules.

The file format and its validation live in :mod:`orchestrator.catalog_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.catalog_spec import (
    BACKENDS,
    QUOTA_LIMITS,
    CatalogSpec,
    FlavourSpec,
    ImageSpec,
    LineDict,
    QuotaSpec,
    load_yaml,
    parse_catalog,
)
from orchestrator.errors import RequestError
from orchestrator.models import Flavour, Image, Instance, Plan, QuotaPolicy, QuotaScope
from quotas.policies import all_policies

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "images" / "catalog.yaml"


@dataclass(frozen=True)
class Change:
    """One line of a catalogue diff: ``+`` created, ``~`` changed, ``-`` deleted."""

    op: str
    kind: str
    name: str
    details: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.op} {self.kind} {self.name}" + (
            ": " + "; ".join(self.details) if self.details else "")


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, int | float) and isinstance(new, int | float) \
            and not isinstance(old, bool) and not isinstance(new, bool):
        return float(old) == float(new)
    return bool(old == new)


def assign(obj: Any, values: dict[str, Any]) -> tuple[str, ...]:
    """Set the attributes that differ; returns ``"field: old -> new"`` for each."""
    details: list[str] = []
    for key, new in values.items():
        old = getattr(obj, key)
        if old is not None and _same(old, new):
            continue
        if old is None and new is None:
            continue
        setattr(obj, key, new)
        if isinstance(old, dict) and isinstance(new, dict):
            # Per entry, so a changed backend reference reads as one line.
            details += [f"{key}.{k}: {_show(old.get(k, '(none)'))} -> "
                        f"{_show(new.get(k, '(none)'))}"
                        for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        else:
            details.append(f"{key}: {_show(old)} -> {_show(new)}")
    return tuple(details)


def image_label(name: str, version: str) -> str:
    return f"{name} {version}".strip()


def plan_label(plan: Plan) -> str:
    return (f"{image_label(plan.image.name, plan.image.version)} on {plan.flavour.name} "
            f"({plan.backend})")


def quota_label(scope: QuotaScope, subject: str) -> str:
    return "default" if scope is QuotaScope.DEFAULT else f"{scope.value.lower()} {subject}"


async def _count(session: AsyncSession, column: Any, value: int) -> int:
    return int(await session.scalar(select(func.count()).where(column == value)) or 0)


# --- applying a file --------------------------------------------------------------------

async def apply_spec(session: AsyncSession, spec: CatalogSpec, *, prune: bool = False
                     ) -> list[Change]:
    """Make the database match ``spec`` (flushed, not committed); returns the changes."""
    changes: list[Change] = []
    images = {(i.name, i.version): i for i in (await session.scalars(select(Image))).all()}
    flavours = {f.name: f for f in (await session.scalars(select(Flavour))).all()}
    for ispec in spec.images or []:
        changes += _upsert(session, images, ispec.key, Image, ispec.fields(), "image",
                           image_label(*ispec.key))
    for fspec in spec.flavours or []:
        changes += _upsert(session, flavours, fspec.name, Flavour, fspec.fields(), "flavour",
                           fspec.name)
    await session.flush()
    plans = {(p.image.name, p.image.version, p.flavour.name, p.backend): p
             for p in (await session.scalars(select(Plan))).all()}
    if spec.plans is not None:
        for pspec in spec.plans:
            plan = plans.get(pspec.key)
            if plan is None:
                plan = Plan(image=images[pspec.image], flavour=flavours[pspec.flavour],
                            backend=pspec.backend, preset=pspec.preset, enabled=pspec.enabled)
                session.add(plan)
                plans[pspec.key] = plan
                changes.append(Change("+", "plan", plan_label(plan)))
            elif details := assign(plan, {"preset": pspec.preset, "enabled": pspec.enabled}):
                changes.append(Change("~", "plan", plan_label(plan), details))
        if any(p.preset for p in spec.plans):
            listed = {p.key for p in spec.plans}
            for key, plan in plans.items():
                if key not in listed and plan.preset:
                    plan.preset = False
                    changes.append(Change("~", "plan", plan_label(plan),
                                          ("preset: True -> False",)))
        if prune:
            changes += await _prune_plans(session, plans, {p.key for p in spec.plans})
    await session.flush()
    if prune and spec.images is not None:
        changes += await _prune(session, images, {i.key for i in spec.images}, Plan.image_id,
                                "image", lambda k: image_label(*k))
    if prune and spec.flavours is not None:
        changes += await _prune(session, flavours, {f.name for f in spec.flavours},
                                Plan.flavour_id, "flavour", str)
    if spec.quotas is not None:
        changes += await _apply_quotas(session, spec.quotas, prune)
    await session.flush()
    return changes


def _upsert(session: AsyncSession, existing: dict[Any, Any], key: Any, model: type,
            values: dict[str, Any], kind: str, label: str) -> list[Change]:
    obj = existing.get(key)
    if obj is None:
        obj = model(**values)
        session.add(obj)
        existing[key] = obj
        return [Change("+", kind, label)]
    details = assign(obj, values)
    return [Change("~", kind, label, details)] if details else []


async def _prune_plans(session: AsyncSession, plans: dict[Any, Plan], listed: set[Any]
                       ) -> list[Change]:
    changes = []
    for key, plan in list(plans.items()):
        if key in listed:
            continue
        used = await _count(session, Instance.plan_id, plan.id) if plan.id else 0
        if used == 0:
            changes.append(Change("-", "plan", plan_label(plan)))
            await session.delete(plan)
            del plans[key]
        elif plan.enabled or plan.preset:
            plan.enabled, plan.preset = False, False
            changes.append(Change("~", "plan", plan_label(plan), (
                f"enabled: True -> False (kept: {used} instance(s) were launched from it)",)))
    return changes


async def _prune(session: AsyncSession, existing: dict[Any, Any], listed: set[Any],
                 column: Any, kind: str, label: Any) -> list[Change]:
    changes = []
    for key, obj in list(existing.items()):
        if key in listed:
            continue
        used = await _count(session, column, obj.id)
        if used == 0:
            changes.append(Change("-", kind, label(key)))
            await session.delete(obj)
            del existing[key]
        elif kind == "image" and not obj.deprecated:
            obj.deprecated = True
            changes.append(Change("~", kind, label(key), (
                f"deprecated: False -> True (kept: {used} plan(s) refer to it)",)))
    return changes


async def _apply_quotas(session: AsyncSession, specs: list[QuotaSpec], prune: bool
                        ) -> list[Change]:
    changes: list[Change] = []
    policies = {(p.scope, p.subject): p for p in (await session.scalars(select(QuotaPolicy)))}
    for qspec in specs:
        changes += _upsert(session, policies, qspec.key, QuotaPolicy,
                           {"scope": qspec.scope, "subject": qspec.subject, **qspec.fields()},
                           "quota", quota_label(*qspec.key))
    if prune:
        listed = {q.key for q in specs}
        for key, policy in policies.items():
            if key not in listed:
                changes.append(Change("-", "quota", quota_label(*key)))
                await session.delete(policy)
    return changes


async def apply_catalog(session: AsyncSession, doc: LineDict, prune: bool = False) -> int:
    """Validate and apply a loaded document (see :func:`load_catalog`); the number of
    changes. Commit is the caller's."""
    return len(await apply_spec(session, parse_catalog(doc), prune=prune))


def load_catalog(path: Path = DEFAULT_CATALOG) -> LineDict:
    """Read a catalogue file (YAML with line numbers, see catalog_spec)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise RequestError(f"{path}: {err.strerror}") from None
    return load_yaml(text, str(path))


# --- export -----------------------------------------------------------------------------

def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


async def export_catalog(session: AsyncSession) -> dict[str, Any]:
    """The whole catalogue and quota policies, in the file format, defaults left out."""
    images = (await session.scalars(select(Image).order_by(Image.name, Image.version))).all()
    versions: dict[str, int] = {}
    for i in images:
        versions[i.name] = versions.get(i.name, 0) + 1
    doc: dict[str, Any] = {"images": [], "flavours": [], "plans": [], "quotas": []}
    for i in images:
        item: dict[str, Any] = {"name": i.name, "version": i.version}
        item |= {k: getattr(i, k) for k in ("description", "icon", "boot_template")
                 if getattr(i, k)}
        item["protocols"] = list(i.protocols)
        if i.backend_refs:
            item["backend_refs"] = dict(i.backend_refs)
        item |= {k: getattr(i, k) for k, default in (("visible", True), ("deprecated", False))
                 if getattr(i, k) != default}
        doc["images"].append(item)
    for f in (await session.scalars(select(Flavour).order_by(Flavour.cpus, Flavour.memory_mb,
                                                             Flavour.name))).all():
        item = {"name": f.name, "cpus": _number(f.cpus), "memory_mb": f.memory_mb,
                "gpus": f.gpus}
        if f.backend_refs:
            item["backend_refs"] = dict(f.backend_refs)
        limits = {k: list(v) for k, v in (("roles", f.limit_roles),
                                          ("instruments", f.limit_instruments)) if v}
        if limits:
            item["limits"] = limits
        doc["flavours"].append(item)
    for p in (await session.scalars(select(Plan).order_by(Plan.id))).all():
        item = {"image": p.image.name}
        if versions.get(p.image.name, 0) > 1:
            item["image_version"] = p.image.version
        item |= {"flavour": p.flavour.name, "backend": p.backend}
        item |= {k: getattr(p, k) for k, default in (("preset", False), ("enabled", True))
                 if getattr(p, k) != default}
        doc["plans"].append(item)
    for q in await all_policies(session):
        item = {"default": True} if q.scope is QuotaScope.DEFAULT \
            else {q.scope.value.lower(): q.subject}
        item |= {k: _number(getattr(q, k)) for k in QUOTA_LIMITS if getattr(q, k) is not None}
        doc["quotas"].append(item)
    return doc


def dump_catalog(doc: dict[str, Any]) -> str:
    return ("# Atrium catalogue (atrium catalog export); apply with `atrium catalog apply`.\n"
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100))


# --- one object at a time (admin pages and API) -----------------------------------------

async def save_image(session: AsyncSession, spec: ImageSpec, image: Image | None = None
                     ) -> Image:
    """Create (``image`` None) or update an image; 409 when the name+version is taken."""
    clash = await session.scalar(select(Image).where(Image.name == spec.name,
                                                     Image.version == spec.version))
    if clash is not None and clash is not image:
        raise RequestError(f"an image {image_label(*spec.key)} exists already", 409)
    if image is None:
        image = Image()
        session.add(image)
    assign(image, spec.fields())
    await session.flush()
    return image


async def save_flavour(session: AsyncSession, spec: FlavourSpec,
                       flavour: Flavour | None = None) -> Flavour:
    """Create or update a flavour; 409 when the name is taken."""
    clash = await session.scalar(select(Flavour).where(Flavour.name == spec.name))
    if clash is not None and clash is not flavour:
        raise RequestError(f"a flavour {spec.name} exists already", 409)
    if flavour is None:
        flavour = Flavour()
        session.add(flavour)
    assign(flavour, spec.fields())
    await session.flush()
    return flavour


async def save_plan(session: AsyncSession, *, image_id: object, flavour_id: object,
                    backend: str, preset: bool, enabled: bool, plan: Plan | None = None
                    ) -> Plan:
    """Create or update a plan; at most one plan is the preset."""
    image = await session.get(Image, image_id) if isinstance(image_id, int) else None
    flavour = await session.get(Flavour, flavour_id) if isinstance(flavour_id, int) else None
    if image is None or flavour is None:
        raise RequestError("a plan needs an existing image_id and flavour_id", 400)
    if backend not in BACKENDS:
        raise RequestError(f"unknown backend {backend!r} (expected {', '.join(BACKENDS)})")
    clash = await session.scalar(select(Plan).where(
        Plan.image_id == image.id, Plan.flavour_id == flavour.id, Plan.backend == backend))
    if clash is not None and clash is not plan:
        raise RequestError(f"the plan {plan_label(clash)} exists already", 409)
    if plan is None:
        plan = Plan()
        session.add(plan)
    plan.image, plan.flavour, plan.backend = image, flavour, backend
    plan.preset, plan.enabled = preset, enabled
    await session.flush()
    if preset:
        for other in (await session.scalars(select(Plan).where(Plan.preset,
                                                                 Plan.id != plan.id))).all():
            other.preset = False
        await session.flush()
    return plan


async def save_quota(session: AsyncSession, spec: QuotaSpec,
                     policy: QuotaPolicy | None = None) -> QuotaPolicy:
    """Create or update a quota policy; 409 when its scope+subject has one already."""
    clash = await session.scalar(select(QuotaPolicy).where(QuotaPolicy.scope == spec.scope,
                                                           QuotaPolicy.subject == spec.subject))
    if clash is not None and clash is not policy:
        raise RequestError(f"a quota policy for {quota_label(*spec.key)} exists already", 409)
    if policy is None:
        policy = QuotaPolicy()
        session.add(policy)
    policy.scope, policy.subject = spec.scope, spec.subject
    for key, value in spec.fields().items():
        setattr(policy, key, value)
    await session.flush()
    return policy


async def delete_image(session: AsyncSession, image: Image) -> None:
    if used := await _count(session, Plan.image_id, image.id):
        raise RequestError(f"{used} plan(s) use the image {image_label(image.name, image.version)}"
                           "; delete those plans first, or deprecate the image", 409)
    await session.delete(image)
    await session.flush()


async def delete_flavour(session: AsyncSession, flavour: Flavour) -> None:
    if used := await _count(session, Plan.flavour_id, flavour.id):
        raise RequestError(f"{used} plan(s) use the flavour {flavour.name}; delete those "
                           "plans first", 409)
    await session.delete(flavour)
    await session.flush()


async def delete_plan(session: AsyncSession, plan: Plan) -> None:
    if used := await _count(session, Instance.plan_id, plan.id):
        raise RequestError(f"{used} instance(s) were launched from the plan {plan_label(plan)}"
                           "; disable it instead (instances and accounting refer to it)", 409)
    await session.delete(plan)
    await session.flush()

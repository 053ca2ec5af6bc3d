"""The image catalogue: images, flavours and plans, applied from a YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.errors import RequestError
from orchestrator.models import Flavour, Image, Plan

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "images" / "catalog.yaml"
PROTOCOLS = {"jupyter", "desktop"}


async def apply_catalog(session: AsyncSession, doc: dict[str, Any]) -> int:
    """Upsert images (by name and version), flavours (by name) and plans; returns changes."""
    changes = 0
    images: dict[str, Image] = {}
    for n, spec in enumerate(doc.get("images") or [], 1):
        bad = set(spec.get("protocols") or []) - PROTOCOLS
        if bad:
            raise RequestError(f"images[{n}]: unknown protocol(s) {', '.join(sorted(bad))}")
        version = str(spec.get("version", ""))
        image = await session.scalar(select(Image).where(Image.name == spec["name"],
                                                         Image.version == version))
        if image is None:
            image = Image(name=spec["name"], version=version)
            session.add(image)
            changes += 1
        for key in ("description", "icon", "protocols", "backend_refs", "boot_template",
                    "visible", "deprecated"):
            if key in spec and getattr(image, key) != spec[key]:
                setattr(image, key, spec[key])
                changes += 1
        images[spec["name"]] = image
    flavours: dict[str, Flavour] = {}
    for spec in doc.get("flavours") or []:
        flavour = await session.scalar(select(Flavour).where(Flavour.name == spec["name"]))
        if flavour is None:
            flavour = Flavour(name=spec["name"])
            session.add(flavour)
            changes += 1
        for key in ("cpus", "memory_mb", "gpus", "backend_refs"):
            if key in spec and getattr(flavour, key) != spec[key]:
                setattr(flavour, key, spec[key])
                changes += 1
        flavours[spec["name"]] = flavour
    await session.flush()
    for n, spec in enumerate(doc.get("plans") or [], 1):
        if spec["image"] not in images or spec["flavour"] not in flavours:
            raise RequestError(f"plans[{n}]: names an unknown image or flavour")
        image, flavour = images[spec["image"]], flavours[spec["flavour"]]
        backend = spec.get("backend", "local")
        plan = await session.scalar(select(Plan).where(
            Plan.image_id == image.id, Plan.flavour_id == flavour.id, Plan.backend == backend))
        if plan is None:
            plan = Plan(image=image, flavour=flavour, backend=backend)
            session.add(plan)
            changes += 1
        if plan.preset != bool(spec.get("preset", False)):
            plan.preset = bool(spec.get("preset", False))
            changes += 1
    await session.flush()
    return changes


def load_catalog(path: Path = DEFAULT_CATALOG) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise RequestError(f"{path}: expected a mapping with images, flavours and plans")
    return doc

"""The catalogue file's format, parsed and validated into specs, with line numbers.

A catalogue file is YAML with up to four sections (absent sections are left alone)::

    images:    [{name, version, description, icon, protocols, backend_refs, boot_template,
                 visible, deprecated}]
    flavours:  [{name, cpus, memory_mb, gpus, backend_refs, limits: {roles, instruments}}]
    plans:     [{image, image_version, flavour, backend, preset, enabled}]
    quotas:    [{user | group | role | default: true, max_instances, max_cpus,
                 max_memory_mb, max_gpus, max_lifetime_hours}]

An object described in the file is described whole: keys left out take their defaults.
Every problem is reported (not only the first), each with the line it is on; a file with
any problem is refused as a whole. The same validators check the admin API's and pages'
input (plain dicts, no line numbers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.errors import RequestError
from orchestrator.models import QuotaScope, Role
from spawners.cloudinit import check_boot_template

PROTOCOLS = ("jupyter", "desktop")
BACKENDS = ("local", "kubernetes", "openstack")
SECTIONS = ("images", "flavours", "plans", "quotas")


class CatalogError(RequestError):
    """The catalogue (or one object) is invalid; ``problems`` are ``line N: ...`` strings."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        head = f"{source}: " if source else ""
        if len(problems) == 1 and not source:
            message = problems[0]
        else:
            message = (f"{head}{len(problems)} problem(s), nothing was changed:\n  "
                       + "\n  ".join(problems))
        super().__init__(message, 400)


# --- YAML with line numbers -------------------------------------------------------------

class LineDict(dict[str, Any]):
    """A mapping from YAML that knows its line and the line of each key."""

    line: int | None = None
    key_lines: dict[str, int]


class LineList(list[Any]):
    line: int | None = None


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain word", key_node.start_mark)
        key = str(key)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} appears twice", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(text: str, source: str) -> LineDict:
    """Parse ``text``; syntax errors are :class:`CatalogError` with the line."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else 0
        raise CatalogError([f"line {line}: not valid YAML: {err.problem}"], source) from None
    except yaml.YAMLError as err:
        raise CatalogError([f"not valid YAML: {err}"], source) from None
    if doc is None:
        doc = LineDict()
        doc.line, doc.key_lines = 1, {}
    if not isinstance(doc, LineDict):
        raise CatalogError([f"line 1: expected a mapping with {', '.join(SECTIONS)}"], source)
    return doc


# --- specs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageSpec:
    name: str
    version: str = ""
    description: str = ""
    icon: str = ""
    protocols: tuple[str, ...] = ("jupyter",)
    backend_refs: dict[str, str] = field(default_factory=dict)
    boot_template: str = ""
    visible: bool = True
    deprecated: bool = False
    line: int | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    def fields(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "description": self.description,
                "icon": self.icon, "protocols": list(self.protocols),
                "backend_refs": dict(self.backend_refs), "boot_template": self.boot_template,
                "visible": self.visible, "deprecated": self.deprecated}


@dataclass(frozen=True)
class FlavourSpec:
    name: str
    cpus: float = 1.0
    memory_mb: int = 2048
    gpus: int = 0
    backend_refs: dict[str, str] = field(default_factory=dict)
    limit_roles: tuple[str, ...] = ()
    limit_instruments: tuple[str, ...] = ()
    line: int | None = field(default=None, compare=False)

    def fields(self) -> dict[str, Any]:
        return {"name": self.name, "cpus": self.cpus, "memory_mb": self.memory_mb,
                "gpus": self.gpus, "backend_refs": dict(self.backend_refs),
                "limit_roles": list(self.limit_roles),
                "limit_instruments": list(self.limit_instruments)}


@dataclass(frozen=True)
class PlanSpec:
    image: tuple[str, str]  # (name, version)
    flavour: str
    backend: str = "local"
    preset: bool = False
    enabled: bool = True
    line: int | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (*self.image, self.flavour, self.backend)


@dataclass(frozen=True)
class QuotaSpec:
    scope: QuotaScope
    subject: str = ""
    max_instances: int | None = None
    max_cpus: float | None = None
    max_memory_mb: int | None = None
    max_gpus: int | None = None
    max_lifetime_hours: float | None = None
    line: int | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[QuotaScope, str]:
        return (self.scope, self.subject)

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in QUOTA_LIMITS}


QUOTA_LIMITS = ("max_instances", "max_cpus", "max_memory_mb", "max_gpus", "max_lifetime_hours")


@dataclass
class CatalogSpec:
    """A validated catalogue; a section is ``None`` when the file does not have it."""

    images: list[ImageSpec] | None = None
    flavours: list[FlavourSpec] | None = None
    plans: list[PlanSpec] | None = None
    quotas: list[QuotaSpec] | None = None


# --- validation -------------------------------------------------------------------------

class Checker:
    """Collects problems about one object, each with the line of the offending value."""

    def __init__(self, data: Mapping[str, Any], where: str, problems: list[str]) -> None:
        self.data = data
        self.where = where
        self.problems = problems

    def line_of(self, key: str | None = None) -> int | None:
        lines = getattr(self.data, "key_lines", {})
        if key is not None and key in lines:
            return int(lines[key])
        return getattr(self.data, "line", None)

    def problem(self, message: str, key: str | None = None) -> None:
        line = self.line_of(key)
        at = f"line {line}: " if line else ""
        self.problems.append(f"{at}{self.where}: {message}")

    def known_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in allowed:
                self.problem(f"unknown key {key!r} (expected one of {', '.join(allowed)})", key)

    def text(self, key: str, default: str = "", *, required: bool = False,
             max_length: int = 255) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                self.problem(f"{key} is required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.problem(f"{key} must be text, not {value!r}"
                         + (" (quote it)" if isinstance(value, float) else ""), key)
            return default
        value = str(value).strip()
        if required and not value:
            self.problem(f"{key} must not be empty", key)
        if len(value) > max_length:
            self.problem(f"{key} is {len(value)} characters long; at most {max_length}", key)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{key} must be true or false, not {value!r}", key)
            return default
        return value

    def number(self, key: str, default: float | None, *, whole: bool, minimum: float,
               above: bool = False, unit: str = "") -> Any:
        value = self.data.get(key, default)
        if value is None:
            return None
        kind = "a whole number" if whole else "a number"
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and whole and isinstance(value, float):
            ok = value.is_integer()
        if ok and (value <= minimum if above else value < minimum):
            ok = False
        if not ok:
            bound = f"above {minimum:g}" if above else f"at least {minimum:g}"
            self.problem(f"{key} must be {kind} {bound}{unit}, not {value!r}", key)
            return default
        return int(value) if whole else float(value)

    def words(self, key: str, allowed: tuple[str, ...] | None = None,
              what: str = "value") -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(f"{key} must be a list of words, not {value!r}", key)
            return ()
        bad = [v for v in value if allowed is not None and v not in allowed]
        if bad:
            self.problem(f"unknown {what}(s) {', '.join(map(repr, bad))} (expected "
                         f"{', '.join(allowed or ())})", key)
        return tuple(dict.fromkeys(v for v in value if v not in bad))

    def refs(self, key: str) -> dict[str, str]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(f"{key} must map backends to references, e.g. "
                         "{local: jupyterlab}", key)
            return {}
        out = {}
        for backend, ref in value.items():
            if backend not in BACKENDS:
                self.problem(f"{key}: unknown backend {backend!r} (expected "
                             f"{', '.join(BACKENDS)})", key)
            elif isinstance(ref, bool) or not isinstance(ref, str | int) or not str(ref):
                self.problem(f"{key}.{backend} must be text, not {ref!r}", key)
            else:
                out[backend] = str(ref)
        return out


def parse_image(data: Mapping[str, Any], where: str, problems: list[str]) -> ImageSpec:
    c = Checker(data, where, problems)
    c.known_keys(("name", "version", "description", "icon", "protocols", "backend_refs",
                  "boot_template", "visible", "deprecated"))
    protocols: tuple[str, ...] = ("jupyter",)
    if "protocols" in data:
        protocols = c.words("protocols", PROTOCOLS, "protocol")
        if data["protocols"] == []:
            c.problem("protocols must name at least one of jupyter, desktop", "protocols")
    boot_template = c.text("boot_template", max_length=100_000)
    refused = check_boot_template(boot_template)
    if refused:
        c.problem(f"boot_template: {refused}", "boot_template")
    return ImageSpec(
        name=c.text("name", required=True, max_length=128),
        version=c.text("version", max_length=64),
        description=c.text("description", max_length=10_000),
        icon=c.text("icon"), protocols=protocols, backend_refs=c.refs("backend_refs"),
        boot_template=boot_template,
        visible=c.flag("visible", True), deprecated=c.flag("deprecated", False),
        line=c.line_of())


def parse_flavour(data: Mapping[str, Any], where: str, problems: list[str]) -> FlavourSpec:
    c = Checker(data, where, problems)
    c.known_keys(("name", "cpus", "memory_mb", "gpus", "backend_refs", "limits"))
    roles: tuple[str, ...] = ()
    instruments: tuple[str, ...] = ()
    limits = data.get("limits")
    if limits is not None:
        if not isinstance(limits, dict):
            c.problem("limits must be a mapping with roles and/or instruments", "limits")
        else:
            lc = Checker(limits, f"{where}: limits", problems)
            lc.known_keys(("roles", "instruments"))
            roles = tuple(sorted(lc.words("roles", tuple(Role.__members__), "role")))
            instruments = tuple(sorted(lc.words("instruments", None, "instrument")))
    return FlavourSpec(
        name=c.text("name", required=True, max_length=128),
        cpus=c.number("cpus", 1.0, whole=False, minimum=0, above=True),
        memory_mb=c.number("memory_mb", 2048, whole=True, minimum=0, above=True, unit=" (MB)"),
        gpus=c.number("gpus", 0, whole=True, minimum=0),
        backend_refs=c.refs("backend_refs"), limit_roles=roles, limit_instruments=instruments,
        line=c.line_of())


def parse_plan(data: Mapping[str, Any], where: str, problems: list[str]) -> PlanSpec:
    c = Checker(data, where, problems)
    c.known_keys(("image", "image_version", "flavour", "backend", "preset", "enabled"))
    backend = c.text("backend", "local")
    if backend not in BACKENDS:
        c.problem(f"unknown backend {backend!r} (expected {', '.join(BACKENDS)})", "backend")
    return PlanSpec(image=(c.text("image", required=True, max_length=128),
                           c.text("image_version", max_length=64)),
                    flavour=c.text("flavour", required=True, max_length=128), backend=backend,
                    preset=c.flag("preset", False), enabled=c.flag("enabled", True),
                    line=c.line_of())


def parse_quota(data: Mapping[str, Any], where: str, problems: list[str]) -> QuotaSpec:
    c = Checker(data, where, problems)
    c.known_keys(("user", "group", "role", "default", *QUOTA_LIMITS))
    scopes = [s for s in ("user", "group", "role", "default") if s in data]
    scope, subject = QuotaScope.DEFAULT, ""
    if len(scopes) != 1:
        c.problem("name exactly one of user, group, role, or default: true")
    elif scopes[0] == "default":
        if data["default"] is not True:
            c.problem("default must be true (it applies to everyone)", "default")
    else:
        scope = QuotaScope(scopes[0].upper())
        subject = c.text(scopes[0], required=True, max_length=128)
        if scope is QuotaScope.ROLE and subject and subject not in Role.__members__:
            c.problem(f"unknown role {subject!r} (expected {', '.join(Role.__members__)})",
                      "role")
    spec = QuotaSpec(
        scope=scope, subject=subject,
        max_instances=c.number("max_instances", None, whole=True, minimum=0),
        max_cpus=c.number("max_cpus", None, whole=False, minimum=0),
        max_memory_mb=c.number("max_memory_mb", None, whole=True, minimum=0, unit=" (MB)"),
        max_gpus=c.number("max_gpus", None, whole=True, minimum=0),
        max_lifetime_hours=c.number("max_lifetime_hours", None, whole=False, minimum=0,
                                    above=True),
        line=c.line_of())
    if not any(data.get(k) is not None for k in QUOTA_LIMITS):
        c.problem(f"set at least one limit ({', '.join(QUOTA_LIMITS)})")
    return spec


def _section(doc: LineDict, name: str, problems: list[str]) -> list[Any] | None:
    if name not in doc:
        return None
    value = doc[name]
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"line {doc.key_lines[name]}: {name} must be a list")
        return []
    for n, item in enumerate(value, 1):
        if not isinstance(item, dict):
            line = getattr(item, "line", None) or doc.key_lines[name]
            problems.append(f"line {line}: {name}[{n}] must be a mapping, not {item!r}")
    return [item if isinstance(item, dict) else None for item in value]


def _label(item: Mapping[str, Any] | None, *keys: str) -> str:
    if not item:
        return ""
    words = [str(item[k]) for k in keys if isinstance(item.get(k), str | int)]
    return f" ({' '.join(words)})" if words else ""


def parse_catalog(doc: LineDict, source: str = "") -> CatalogSpec:
    """Validate a whole catalogue document; raise :class:`CatalogError` listing every
    problem with its line, so a bad file changes nothing."""
    problems: list[str] = []
    for key in doc:
        if key not in SECTIONS:
            problems.append(f"line {doc.key_lines[key]}: unknown section {key!r} (expected "
                            f"{', '.join(SECTIONS)})")
    spec = CatalogSpec()
    images = _section(doc, "images", problems)
    if images is not None:
        spec.images = [parse_image(i, f"images[{n}]{_label(i, 'name', 'version')}", problems)
                       for n, i in enumerate(images, 1) if i is not None]
        _unique(spec.images, lambda s: s.key, "image", problems)
    flavours = _section(doc, "flavours", problems)
    if flavours is not None:
        spec.flavours = [parse_flavour(f, f"flavours[{n}]{_label(f, 'name')}", problems)
                         for n, f in enumerate(flavours, 1) if f is not None]
        _unique(spec.flavours, lambda s: s.name, "flavour", problems)
    plans = _section(doc, "plans", problems)
    if plans is not None:
        spec.plans = []
        for n, p in enumerate(plans, 1):
            if p is None:
                continue
            where = f"plans[{n}]{_label(p, 'image', 'flavour')}"
            plan = parse_plan(p, where, problems)
            spec.plans.append(_resolve_plan(plan, p, where, spec, problems))
        _unique(spec.plans, lambda s: s.key, "plan", problems)
        presets = [p for p in spec.plans if p.preset]
        for extra in presets[1:]:
            problems.append(f"line {extra.line}: only one plan may be the preset (line "
                            f"{presets[0].line} is already)")
    quotas = _section(doc, "quotas", problems)
    if quotas is not None:
        spec.quotas = [parse_quota(q, f"quotas[{n}]", problems)
                       for n, q in enumerate(quotas, 1) if q is not None]
        _unique(spec.quotas, lambda s: s.key, "quota policy", problems)
    if problems:
        raise CatalogError(sorted(problems, key=_line_number), source)
    return spec


def _resolve_plan(plan: PlanSpec, data: Mapping[str, Any], where: str, spec: CatalogSpec,
                  problems: list[str]) -> PlanSpec:
    """Plans name an image and a flavour of the same file; an image name with several
    versions needs ``image_version``."""
    c = Checker(data, where, problems)
    name, version = plan.image
    if name and "image_version" not in data:
        versions = [i.version for i in spec.images or [] if i.name == name]
        if len(versions) > 1:
            c.problem(f"image {name!r} has versions {', '.join(versions)}: add image_version",
                      "image")
        elif versions:
            version = versions[0]
    if name and (name, version) not in {i.key for i in spec.images or []}:
        what = f"{name!r} version {version!r}" if version else repr(name)
        c.problem(f"image {what} is not defined in this file's images", "image")
    if plan.flavour and plan.flavour not in {f.name for f in spec.flavours or []}:
        c.problem(f"flavour {plan.flavour!r} is not defined in this file's flavours",
                  "flavour")
    return PlanSpec(image=(name, version), flavour=plan.flavour, backend=plan.backend,
                    preset=plan.preset, enabled=plan.enabled, line=plan.line)


def _unique(items: list[Any], key: Any, what: str, problems: list[str]) -> None:
    seen: dict[Any, int | None] = {}
    for item in items:
        k = key(item)
        if k in seen:
            problems.append(f"line {item.line}: this {what} is already defined on line "
                            f"{seen[k]}")
        else:
            seen[k] = item.line


def _line_number(problem: str) -> int:
    head = problem.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0


def parse_text(text: str, source: str = "") -> CatalogSpec:
    return parse_catalog(load_yaml(text, source), source)


def parse_one(parser: Any, data: Mapping[str, Any], what: str) -> Any:
    """Validate one object from the admin API or pages (no line numbers)."""
    problems: list[str] = []
    spec = parser(data, what, problems)
    if problems:
        raise CatalogError(problems)
    return spec

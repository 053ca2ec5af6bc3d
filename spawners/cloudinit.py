"""Cloud-init user-data for Atrium VMs: a pure builder (reads templates, nothing else).

:func:`render_user_data` turns an :class:`~spawners.base.InstanceSpec` into the
``#cloud-config`` document a VM boots with. The document is rendered with Jinja2 from the
image's boot template (``InstanceSpec.boot_template``; ``images/boot/cloud-init.yaml.j2``
by default) and then checked to be a YAML mapping starting with ``#cloud-config``.

Contracts the templates can rely on (and tests check):

* the owner account is described by ``owner`` (name, uid, gid, home ``/home/<name>``);
* ``mounts`` holds exactly the spec's mounts, each at ``<home>/<target>`` (as on the other
  backends), with its fstab options forced to ``ro`` unless the mount says otherwise;
  devices come from admin-configured :class:`MountTemplate` s;
* templates render in Jinja2's immutable sandbox (:mod:`spawners.templating`): one
  reaching for Python internals fails with a :class:`BootTemplateError` at launch, and
  :func:`check_boot_template` refuses it when the catalogue is applied;
* ``env`` holds the only secrets the template receives: this instance's
  ``jupyter_token`` (as ``ATRIUM_SESSION_TOKEN``) when it runs JupyterLab and its
  ``vnc_password`` when it runs a desktop. Other keys of ``spec.secrets`` never reach the
  template, so a template cannot leak them.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from spawners.base import DataMount, InstanceSpec, Owner
from spawners.templating import SecurityError, format_placeholders, sandboxed_environment

BOOT_DIR = Path(__file__).resolve().parent.parent / "images" / "boot"
DEFAULT_TEMPLATE = "cloud-init.yaml.j2"
IDENTITY_PROVIDER = "images.jupyter_identity.AtriumIdentityProvider"
ENV_FILE = "/etc/atrium/session.env"

_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_NO_SPACE = re.compile(r"^\S+$")


class BootTemplateError(ValueError):
    """The spec cannot be rendered safely, or the template produced invalid user-data."""


@dataclass(frozen=True)
class MountTemplate:
    """How a kind of data source becomes an fstab entry (configured by the admin).

    ``device`` is a ``str.format`` pattern over ``{path}`` (the source without its
    ``kind:`` prefix), ``{source}`` (the whole source) and ``{name}`` (the proposal id),
    e.g. ``"nfs.example.org:/exports{path}"`` or
    ``"10.0.0.1,10.0.0.2:/volumes/data{path}"`` with ``fstype="ceph"``.
    """

    device: str = "{source}"
    fstype: str = "nfs4"
    options: str = "noatime,_netdev"


@dataclass(frozen=True)
class BootSettings:
    """Deployment-wide inputs of the boot document (not per instance)."""

    deployment_id: str = ""
    jupyter_port: int = 8888
    desktop_port: int = 6080  # RFB (VNC), as on the other backends
    jupyter_command: str = "jupyter"
    desktop_command: str = "start-desktop.sh"
    home_root: str = "/home"
    # DataMount.source "kind:/path" uses templates[kind]; anything else uses "default"
    mount_templates: Mapping[str, MountTemplate] = field(
        default_factory=lambda: {"default": MountTemplate()})
    template_dirs: tuple[str, ...] = ()  # searched before images/boot


def _shquote(value: Any) -> str:
    return shlex.quote(str(value))


def _environment(dirs: tuple[str, ...]) -> jinja2.Environment:
    # Boot templates are admin data: the immutable sandbox keeps them off Python internals.
    env = sandboxed_environment([*dirs, str(BOOT_DIR)])
    env.filters["shquote"] = _shquote
    # JSON strings are valid YAML scalars; plain json.dumps (not Jinja's HTML-safe tojson)
    env.filters["tojson"] = lambda value: json.dumps(value)
    return env


def mount_entries(spec: InstanceSpec, settings: BootSettings) -> list[dict[str, Any]]:
    """The fstab entries of the spec's mounts, in spec order (pure)."""
    home = posixpath.join(settings.home_root, spec.owner.username)
    entries = []
    for mount in spec.mounts:
        kind, sep, path = mount.source.partition(":")
        if sep and kind in settings.mount_templates and kind != "default":
            template = settings.mount_templates[kind]
        else:
            template, path = settings.mount_templates["default"], mount.source
        target = posixpath.normpath(posixpath.join(home, mount.target))
        if mount.target.startswith("/") or not target.startswith(home + "/"):
            raise BootTemplateError(f"mount target {mount.target!r} leaves the home dir")
        try:
            device = format_placeholders(
                template.device, {"path": path, "source": mount.source, "name": mount.name},
                "mount device pattern")
        except ValueError as err:
            raise BootTemplateError(str(err)) from err
        flags = [o for o in template.options.split(",") if o and o not in ("ro", "rw")]
        options = ",".join(["ro" if mount.read_only else "rw", *flags])
        for value in (device, target, template.fstype, options):
            if not _NO_SPACE.match(value):
                raise BootTemplateError(f"mount {mount.name!r}: blank or spaced {value!r}")
        entries.append({"name": mount.name, "device": device, "target": target,
                        "fstype": template.fstype, "options": options,
                        "read_only": mount.read_only})
    return entries


def jupyter_argv(spec: InstanceSpec, settings: BootSettings) -> list[str]:
    """JupyterLab's command line inside the VM (the token comes from the environment)."""
    return [
        settings.jupyter_command, "lab", "--no-browser", "--ip=0.0.0.0",
        f"--port={settings.jupyter_port}", "--port-retries=0",
        f"--ServerApp.base_url={spec.base_url}",
        f"--ServerApp.identity_provider_class={IDENTITY_PROVIDER}",
        # the portal's proxy reaches the VM by address; auth is the session token
        "--ServerApp.allow_remote_access=True",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]


def _services(spec: InstanceSpec, settings: BootSettings) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = {}
    if "jupyter" in spec.protocols:
        services["jupyter"] = {
            "argv": jupyter_argv(spec, settings), "port": settings.jupyter_port,
            "environment_file": ENV_FILE, "user": spec.owner.username,
            "unit": "atrium-jupyter.service"}
    if "desktop" in spec.protocols:
        # images/desktop/start-desktop.sh, installed by the image in /usr/local/bin: Xvnc
        # serving RFB (VncAuth with $VNC_PASSWORD) plus the desktop session
        services["desktop"] = {
            "argv": [settings.desktop_command, f"--listen=0.0.0.0:{settings.desktop_port}"],
            "port": settings.desktop_port, "environment_file": ENV_FILE,
            "user": spec.owner.username, "unit": "atrium-desktop.service"}
    return services


def _session_env(spec: InstanceSpec) -> dict[str, str]:
    """This instance's secrets for the protocols it runs, and nothing else."""
    wanted = {"jupyter": ("jupyter_token", "ATRIUM_SESSION_TOKEN"),
              "desktop": ("vnc_password", "VNC_PASSWORD")}
    env = {"ATRIUM_INSTANCE": spec.uid, "ATRIUM_BASE_URL": spec.base_url}
    for protocol in spec.protocols:
        if protocol not in wanted:
            continue
        secret, var = wanted[protocol]
        value = spec.secrets.get(secret, "")
        if not value or "\n" in value:
            raise BootTemplateError(f"instance {spec.uid}: missing or invalid {secret}")
        env[var] = value
    return env


def template_source(spec: InstanceSpec, settings: BootSettings) -> jinja2.Template:
    """The spec's boot template: inline text if it has a newline, else a file name."""
    env = _environment(settings.template_dirs)
    ref = spec.boot_template or DEFAULT_TEMPLATE
    try:
        return env.from_string(ref) if "\n" in ref else env.get_template(ref)
    except jinja2.TemplateError as err:
        raise BootTemplateError(f"boot template {ref[:60]!r}: {err}") from err


def render_user_data(spec: InstanceSpec, settings: BootSettings | None = None) -> str:
    """Render and validate the cloud-config user-data of ``spec``.

    Raises :class:`BootTemplateError` for an unsafe spec (bad username, mount escaping
    the home dir, missing secret) or a template whose output is not a cloud-config
    mapping.
    """
    settings = settings or BootSettings()
    owner = spec.owner
    if not _USERNAME.match(owner.username):
        raise BootTemplateError(f"invalid owner username {owner.username!r}")
    context = {
        "instance": {"uid": spec.uid, "name": spec.name, "base_url": spec.base_url,
                     "deployment": settings.deployment_id},
        "owner": {"username": owner.username, "uid": owner.uid, "gid": owner.gid,
                  "email": owner.email,
                  "home": posixpath.join(settings.home_root, owner.username)},
        "protocols": list(spec.protocols),
        "mounts": mount_entries(spec, settings),
        "services": _services(spec, settings),
        "env": _session_env(spec),
    }
    try:
        text = template_source(spec, settings).render(**context)
    except SecurityError as err:
        raise BootTemplateError(f"boot template refused by the sandbox: {err}") from err
    except jinja2.TemplateError as err:
        raise BootTemplateError(f"boot template failed: {err}") from err
    if not text.startswith("#cloud-config\n"):
        raise BootTemplateError("user-data must start with '#cloud-config'")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise BootTemplateError(f"user-data is not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise BootTemplateError("user-data must be a YAML mapping")
    return text


def check_boot_template(text: str) -> str:
    """Why an inline catalogue boot template is refused ("" when it is accepted).

    A syntax error, or a sandbox violation met while rendering it for a sample instance
    (both protocols, one mount). Other render failures depend on the instance and are
    left to launch time; file names (no newline) are resolved by the backend.
    """
    if "\n" not in text:
        return ""
    sample = InstanceSpec(
        uid="sample", name="sample", image_ref="", flavour_ref="",
        protocols=("jupyter", "desktop"), owner=Owner("sample"),
        mounts=(DataMount("sample", "/data/sample", "data/sample"),),
        secrets={"jupyter_token": "t", "vnc_password": "p"}, boot_template=text)
    try:
        render_user_data(sample)
    except BootTemplateError as err:
        cause = err.__cause__
        if isinstance(cause, SecurityError | jinja2.TemplateSyntaxError):
            return str(err)
    return ""

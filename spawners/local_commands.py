"""Command lines of local sessions (pure): JupyterLab, the VNC server, the desktop session.

A local profile (the image's ``local`` reference) chooses the desktop session:

* ``jupyterlab`` - no desktop;
* ``desktop-xfce`` - xfce, falling back to openbox when xfce is not installed;
* ``desktop-openbox`` - openbox, the light one.

Which services start is decided by the image's protocols (``jupyter``, ``desktop``).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from spawners.base import InstanceSpec

IDENTITY_PROVIDER = "images.jupyter_identity.AtriumIdentityProvider"
PROFILES = ("jupyterlab", "desktop-xfce", "desktop-openbox")


def jupyter_command(python: str, spec: InstanceSpec, port: int | None, home: Path,
                    sock: str = "") -> list[str]:
    """JupyterLab on loopback ``port``, or (sandboxed) on the Unix socket ``sock``, which only
    the portal reaches: the Host check is then moot (the portal sends its own host names)."""
    listen = ([f"--ServerApp.sock={sock}", "--ServerApp.sock_mode=0600",
               "--ServerApp.allow_remote_access=True"] if sock
              else ["--allow-root", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0"])
    return [
        python, "-m", "jupyterlab", "--no-browser", *listen,
        f"--ServerApp.base_url={spec.base_url}",
        f"--ServerApp.root_dir={home}",
        f"--ServerApp.identity_provider_class={IDENTITY_PROVIDER}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]


def vnc_command(display: int, port: int | None, password_file: Path,
                geometry: str = "1280x800", unix_path: str = "") -> list[str]:
    """TigerVNC's X server, on loopback ``port`` or (sandboxed) only on the Unix socket
    ``unix_path``, asking for the instance's VNC password."""
    listen = (["-rfbunixpath", unix_path, "-rfbunixmode", "0600", "-rfbport", "-1"]
              if unix_path else ["-rfbport", str(port), "-localhost"])
    return ["Xvnc", f":{display}", *listen, "-nolisten", "tcp",
            "-SecurityTypes", "VncAuth", "-PasswordFile", str(password_file),
            "-geometry", geometry, "-depth", "24", "-AlwaysShared", "-AcceptSetDesktopSize",
            # Readiness probes connect without authenticating; only the portal's bridge
            # (on loopback) talks to this server, so its blacklist would only lock us out.
            "-UseBlacklist=0",
            "-desktop", "Atrium"]


def desktop_session_command(profile: str) -> list[str]:
    """The window manager / desktop session, run with DISPLAY set."""
    if profile == "desktop-xfce" and shutil.which("xfce4-session"):
        return ["dbus-launch", "--exit-with-session", "xfce4-session"]
    return ["openbox-session"] if shutil.which("openbox-session") else ["openbox"]


def mount_script(mounts: list[tuple[Path, Path]]) -> str:
    """Shell lines that bind each source read-only onto its target, then run "$@"."""
    lines = []
    for source, target in mounts:
        s, t = shlex.quote(str(source)), shlex.quote(str(target))
        lines.append(f"mount --bind {s} {t} && mount -o remount,bind,ro {t}")
    return " && ".join([*lines, 'exec "$@"'])


def in_mount_namespace(command: list[str], mounts: list[tuple[Path, Path]]) -> list[str]:
    """``command`` in a private mount namespace where ``mounts`` are read-only binds."""
    if not mounts:
        return command
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", mount_script(mounts), "atrium-session", *command]

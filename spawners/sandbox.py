"""The local session sandbox (bubblewrap): what one instance's processes can see and do.

One sandbox per instance holds everything the session runs (Xvnc, the desktop session,
JupyterLab, kernels, terminals), so they share a private ``/tmp`` and the X socket. The
launch chain, built here as pure data:

1. ``sh`` (as root, outside) writes its pid into the instance's control groups, then execs
2. ``bwrap`` (as root: it may bind anything) with new mount, PID, IPC, UTS, network and
   cgroup namespaces, ``--new-session``, a root filesystem of only: the system read-only
   (``/usr``, ``/etc``, the ``/bin``-style links), ``/proc``, a minimal ``/dev``, a private
   ``/tmp``, the home read-write at ``/home/<username>``, the chosen experiments' data
   read-only at ``~/data/<proposal>``, the instance's run directory (sockets) and the
   Python that runs JupyterLab read-only; then
3. ``setpriv`` becomes the session's uid/gid/groups, clears every capability (effective,
   inheritable, ambient and the bounding set) and sets ``no_new_privs``; then
4. an unprivileged ``bwrap --unshare-user --disable-userns`` puts the session in a user
   namespace where no further user namespace can be made (so ``unshare``/``mount`` fail
   even in a namespace of its own), and runs
5. the session script (:func:`session_script`), which starts the services in the
   background, records their pids (as seen inside) in ``services`` and waits.

Nothing of the portal (its state directory, database, secrets), no other session's home,
sockets or processes, and no experiment data but the chosen ones exist inside. The network
namespace has only a loopback of its own: the portal reaches JupyterLab and the VNC server
through Unix sockets in the run directory (owned by the session's uid, mode 0700).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT_INSIDE = "/run/atrium-session.sh"
IMAGES_INSIDE = "/opt/atrium"  # images.jupyter_identity is imported from here
JUPYTER_STATE_INSIDE = "/opt/atrium/jupyter"  # JupyterLab's config, data, runtime dirs
SYSTEM_RO = ("/usr", "/etc")
SYSTEM_TRY_RO = ("/opt/conda", "/var/lib/dbus", "/var/lib/openbox", "/var/cache/fontconfig")
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class SandboxPlan:
    """Everything one instance's sandbox binds: (source, path inside) pairs; the run
    directory, Python and the script keep their paths."""

    identity: Identity
    home: tuple[Path, Path]  # e.g. <sessions>/<uid>/home at /home/<username>
    run_dir: Path  # sockets, VNC password, XDG_RUNTIME_DIR; owned by the uid, 0700
    x11_dir: Path  # becomes /tmp/.X11-unix inside
    state_dirs: tuple[tuple[Path, Path], ...]  # read-write (JupyterLab's own files)
    data: tuple[tuple[Path, Path], ...]  # (source, target under the inside home), read-only
    python_dirs: tuple[Path, ...]  # the interpreter / venv, read-only
    images_dir: Path | None  # the `images` package (read-only at IMAGES_INSIDE/images)
    script: Path  # the session script, bound read-only at SCRIPT_INSIDE
    extra_ro: tuple[Path, ...] = field(default_factory=tuple)
    files: tuple[tuple[Path, str], ...] = ()  # (source, path inside), read-only (/etc/passwd)


def _ancestors(paths: Iterable[Path]) -> list[str]:
    """Every directory above the bind targets, parents first (made 0755 in the new root:
    bwrap would make them 0700, which the session's uid could not cross)."""
    seen: list[str] = []
    for path in paths:
        for parent in reversed(path.parents):
            text = str(parent)
            if text != "/" and text not in seen:
                seen.append(text)
    return seen


def bwrap_args(plan: SandboxPlan) -> list[str]:
    """The outer (privileged) bwrap's arguments up to and including ``--``."""
    args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
            "--unshare-cgroup-try", "--new-session", "--hostname", "atrium-session"]
    for path in SYSTEM_RO:
        args += ["--ro-bind", path, path]
    for link in ROOT_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    for path in SYSTEM_TRY_RO:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    targets = [plan.home[1], plan.run_dir, *(t for _, t in plan.state_dirs), *plan.python_dirs,
               *(t for _, t in plan.data), *plan.extra_ro, Path(SCRIPT_INSIDE),
               Path(IMAGES_INSIDE) / "images", *map(Path, SYSTEM_TRY_RO)]
    for parent in _ancestors(targets):
        if parent == "/tmp" or any(parent == p or parent.startswith(p + "/")
                                   for p in ("/usr", "/etc", "/proc", "/dev")):
            continue
        args += ["--perms", "0755", "--dir", parent]
    for ro in (*plan.python_dirs, *plan.extra_ro):
        args += ["--ro-bind", str(ro), str(ro)]
    if plan.images_dir is not None:
        args += ["--ro-bind", str(plan.images_dir), f"{IMAGES_INSIDE}/images"]
    for source, inside_path in plan.files:
        args += ["--ro-bind", str(source), inside_path]
    args += ["--bind", str(plan.home[0]), str(plan.home[1])]
    for source, target in plan.data:
        args += ["--ro-bind", str(source), str(target)]
    for source, inside in plan.state_dirs:
        args += ["--bind", str(source), str(inside)]
    args += ["--bind", str(plan.run_dir), str(plan.run_dir),
             "--bind", str(plan.x11_dir), "/tmp/.X11-unix",
             "--ro-bind", str(plan.script), SCRIPT_INSIDE,
             "--chdir", str(plan.home[1]), "--"]
    return args


def account_files(identity: Identity, username: str, home: Path, passwd: str, group: str
                  ) -> tuple[str, str]:
    """/etc/passwd and /etc/group for inside: the host's plus the session's own entries
    (dbus, ssh, `id` and others refuse a uid without a name)."""
    name = username if username and ":" not in username and "\n" not in username else "user"
    known = {line.split(":")[0] for line in passwd.splitlines()}
    if name in known:
        name = f"atrium-{identity.uid}"
    passwd = passwd.rstrip("\n") + f"\n{name}:x:{identity.uid}:{identity.gid}::{home}:/bin/bash\n"
    if str(identity.gid) not in {line.split(":")[2] for line in group.splitlines()
                                 if line.count(":") >= 2}:
        group = group.rstrip("\n") + f"\n{name}:x:{identity.gid}:\n"
    return passwd, group


def drop_privileges(identity: Identity) -> list[str]:
    """``setpriv``: the session's identity, no capabilities at all, ``no_new_privs``."""
    groups = (["--groups", ",".join(str(g) for g in identity.groups)] if identity.groups
              else ["--clear-groups"])
    return ["setpriv", "--reuid", str(identity.uid), "--regid", str(identity.gid), *groups,
            "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
            "--no-new-privs", "--"]


NO_USERNS = ["bwrap", "--unshare-user", "--disable-userns", "--dev-bind", "/", "/",
             "--cap-drop", "ALL", "--"]


def sandbox_command(plan: SandboxPlan) -> tuple[list[str], list[str]]:
    """(the outer bwrap's options, the command it runs: setpriv, bwrap, the script)."""
    return bwrap_args(plan)[:-1], ["--", *drop_privileges(plan.identity), *NO_USERNS,
                                   "sh", SCRIPT_INSIDE]


def launcher(args_file: Path, cgroup_procs: list[Path], command: list[str]) -> list[str]:
    """``sh`` that joins the instance's control groups, then execs bwrap with its options
    read from ``args_file`` (NUL separated, keeping ``ps`` short) and ``command``."""
    script = ('a=$1; n=$2; shift 2; i=0; while [ "$i" -lt "$n" ]; do '
              'echo $$ > "$1" || exit 125; shift; i=$((i+1)); done; '
              'umask 022; exec bwrap --args 3 "$@" 3< "$a"')
    return ["sh", "-c", script, "atrium-sandbox", str(args_file), str(len(cgroup_procs)),
            *map(str, cgroup_procs), *command]


@dataclass(frozen=True)
class Service:
    name: str  # recorded in `services`: jupyter, vnc, session
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    wait_for: str = ""  # a path that must exist before the service starts (the X socket)
    then: str = ""  # shell run in the background once the service started


def publish_when_wm_runs(display: str, starting: Path, final: Path) -> str:
    """Shell: once a window manager has started on ``display`` (it set EWMH's work area, the
    last of its start-up), rename the VNC socket from ``starting`` to ``final``: the portal
    sees the desktop ready when clicks reach a window manager. At most 15 s: a slow desktop
    (xfce on a loaded machine) is shown as it draws rather than not at all."""
    check = f"DISPLAY={display} xprop -root _NET_WORKAREA 2>/dev/null"
    return (f"i=0; while command -v xprop >/dev/null && ! {check} | grep -q = && "
            f'[ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done; '
            f"mv {shlex.quote(str(starting))} {shlex.quote(str(final))}")


def session_script(services: list[Service], services_file: Path) -> str:
    """The script run inside: start each service in the background, write ``name pid`` lines
    to ``services_file`` (atomically, once all are started), then wait for them."""
    tmp = shlex.quote(f"{services_file}.tmp")
    lines = ["set -u", f": > {tmp}"]
    for service in services:
        if service.wait_for:
            lines.append(f"i=0; while [ ! -e {shlex.quote(service.wait_for)} ] && "
                         "[ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in service.env.items())
        command = " ".join(shlex.quote(a) for a in service.command)
        lines.append(f"{'env ' + env + ' ' if env else ''}{command} &")
        lines.append(f'echo "{service.name} $!" >> {tmp}')
        if service.then:
            lines.append(f"( {service.then} ) &")
    lines += [f"mv {tmp} {shlex.quote(str(services_file))}", "wait"]
    return "\n".join(lines) + "\n"


def write_args(path: Path, options: list[str]) -> None:
    """The ``--args`` file: bwrap's options, NUL separated (root-only, 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(a.encode() + b"\0" for a in options))


def unavailable_reason() -> str:
    """Why this machine cannot sandbox local sessions ("" when it can)."""
    if os.geteuid() != 0:
        return "the portal does not run as root (it must bind mounts and change uid)"
    for tool in ("bwrap", "setpriv"):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian packages bubblewrap, util-linux)"
    probe = subprocess.run(
        ["bwrap", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc",
         "--dev", "/dev", "--",
         "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *NO_USERNS,
         "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"bubblewrap cannot make a sandbox here: {probe.stderr.strip()[-300:]}"
    return ""

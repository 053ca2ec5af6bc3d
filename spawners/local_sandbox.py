"""Starting one local instance inside its sandbox (see :mod:`spawners.sandbox`).

Files of one sandboxed instance:

* ``<sessions_dir>/<uid>/`` (root, 0700): labels, ``process.json``, the log, the session
  script and bwrap's argument file; ``home/`` and ``jupyter/`` inside are owned by the
  session's uid and bound into the sandbox;
* ``<run_dir>/<deployment>.<uid>/`` (the session's uid, 0700; a short path because Unix
  socket paths are limited to 108 bytes): ``jupyter.sock``, ``vnc.sock``, ``vncpasswd``,
  ``x11/`` (the sandbox's ``/tmp/.X11-unix``), ``services``. The host's
  ``/tmp/.X11-unix/X<n>`` is a link to the X socket, reachable by root only (the portal
  switches keyboard layouts through it).

The instance's control groups (:mod:`spawners.cgroups`) hold every process of the sandbox
from its first instruction: the launcher joins them before it execs bwrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spawners.base import BackendError, InstanceSpec, Owner
from spawners.cgroups import InstanceCgroup, Layout, Limits
from spawners.endpoints import unix_endpoint
from spawners.local_commands import desktop_session_command, jupyter_command, vnc_command
from spawners.localproc import start_ticks, tail
from spawners.sandbox import (
    IMAGES_INSIDE,
    JUPYTER_STATE_INSIDE,
    Identity,
    SandboxPlan,
    Service,
    account_files,
    launcher,
    publish_when_wm_runs,
    sandbox_command,
    session_script,
    write_args,
)
from spawners.vncauth import vnc_password_file

SANDBOX_MODES = ("required", "off-single-user")


@dataclass(frozen=True)
class LocalOptions:
    """The local backend's settings (ATRIUM_LOCAL_*)."""

    sandbox: str = "required"
    run_dir: Path = Path("/run/atrium")
    cgroup_parent: str = "atrium"
    pids_max: int = 1024


def identity_for(owner: Owner) -> Identity:
    """The POSIX identity the owner's sessions run as; never root, never the portal's."""
    if owner.uid <= 0 or owner.gid <= 0 or owner.uid == os.getuid():
        raise BackendError(f"refusing to run a session as uid {owner.uid} / gid {owner.gid}: "
                           "not root and not the portal's own uid")
    return Identity(owner.uid, owner.gid,
                    tuple(g for g in owner.groups if g > 0 and g != os.getgid()))


def inside_home(username: str) -> Path:
    """``/home/<username>``: where the session sees its home (the host path stays hidden)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", username).lstrip(".") or "user"
    return Path("/home") / name


def python_dirs(python: str) -> tuple[Path, ...]:
    """What of ``python`` the sandbox must see: its venv and its base installation."""
    exe = Path(python)
    found: list[Path] = []
    venv = exe.parent.parent
    if (venv / "pyvenv.cfg").exists():
        found.append(venv)
    base = exe.resolve().parent.parent
    if not (base == Path("/usr") or str(base).startswith("/usr/")) and base not in found:
        found.append(base)
    return tuple(found)


def images_dir() -> Path | None:
    spec = importlib.util.find_spec("images")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def _own(path: Path, identity: Identity, mode: int) -> None:
    os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
    path.chmod(mode)


def _own_tree(path: Path, identity: Identity) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), identity.uid, identity.gid,
                     follow_symlinks=False)
    os.chown(path, identity.uid, identity.gid)


TOKEN_FILE = "jupyter-token"


def write_owned(path: Path, content: str | bytes, identity: Identity) -> None:
    """Replace ``path`` atomically with a 0600 file of the session's uid (its own secret)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    os.chown(tmp, identity.uid, identity.gid)
    os.replace(tmp, path)


def x_link(display: int) -> Path:
    return Path(f"/tmp/.X11-unix/X{display}")


def _abstract_x_sockets() -> set[int]:
    """Display numbers with an abstract X socket in this network namespace."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines():
            name = line.rsplit(" ", 1)[-1]
            if name.startswith("@/tmp/.X11-unix/X") and name[17:].isdigit():
                found.add(int(name[17:]))
    return found


def reserve_display(target: Path, first: int = 20) -> int:
    """A display number, reserved by linking ``/tmp/.X11-unix/X<n>`` to ``target``."""
    x11 = Path("/tmp/.X11-unix")
    if not x11.is_dir():
        x11.mkdir()
        x11.chmod(0o1777)  # as X servers expect it (mkdir's mode is cut by the umask)
    busy = _abstract_x_sockets()
    for n in range(first, first + 1000):
        if n in busy or Path(f"/tmp/.X{n}-lock").exists():
            continue
        try:
            os.symlink(target, x_link(n))
        except FileExistsError:
            continue
        return n
    raise BackendError("no free X display number")


def release_display(display: int | None, run_dir: Path) -> None:
    if display is None:
        return
    link = x_link(display)
    with contextlib.suppress(OSError):
        if link.is_symlink() and os.readlink(link).startswith(str(run_dir)):
            link.unlink()


class Sandboxes:
    """Makes, finds and removes the sandboxes of one deployment's local instances."""

    def __init__(self, deployment_id: str, options: LocalOptions, python: str,
                 layout: Layout) -> None:
        self.deployment_id, self.options, self.python = deployment_id, options, python
        self.layout = layout

    def run_dir(self, uid: str) -> Path:
        path = self.options.run_dir / f"{self.deployment_id}.{uid}"
        if len(str(path / "jupyter.sock")) > 100:
            raise BackendError(f"ATRIUM_LOCAL_RUN_DIR={self.options.run_dir} is too long "
                               "for Unix socket paths (108 bytes at most)")
        return path

    def cgroup(self, uid: str) -> InstanceCgroup:
        return InstanceCgroup(self.layout, self.options.cgroup_parent,
                              f"{self.deployment_id}.{uid}")

    def prepare_home(self, home: Path, spec: InstanceSpec) -> None:
        """Hand the home to the session's uid, with a plain directory (not a link the
        session made) as each experiment's mount point."""
        identity = identity_for(spec.owner)
        if home.stat().st_uid != identity.uid:
            _own_tree(home, identity)
        home.chmod(0o700)
        for mount in spec.mounts:
            point = home / mount.target
            for path in (*reversed(point.relative_to(home).parents[:-1]), point.relative_to(home)):
                here = home / path
                if here.is_symlink() or (here.exists() and not here.is_dir()):
                    here.unlink()
                if not here.exists():
                    here.mkdir()
                    _own(here, identity, 0o755)

    async def start(self, spec: InstanceSpec, root: Path, env: dict[str, str]
                    ) -> dict[str, Any]:
        """Launch the instance's sandbox; returns ``process.json``'s content."""
        identity = identity_for(spec.owner)
        home, run = root / "home", self.run_dir(spec.uid)
        inside = inside_home(spec.owner.username)
        self.prepare_home(home, spec)
        self.options.run_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        if run.exists():
            await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, run)
        (run / "x11").mkdir(parents=True)
        for path in (run, run / "x11"):
            _own(path, identity, 0o700)
        state = root / "jupyter"
        for sub in ("config", "data", "runtime", "ipython"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        _own_tree(state, identity)
        state.chmod(0o700)
        token = run / TOKEN_FILE  # the session reads its own token (rotate_secrets rewrites it)
        if "jupyter" in spec.protocols:
            write_owned(token, spec.secrets.get("jupyter_token", "") + "\n", identity)
        env = {**env, "HOME": str(inside), "XDG_RUNTIME_DIR": str(run),
               "ATRIUM_SESSION_TOKEN_FILE": str(token),
               "PYTHONPATH": IMAGES_INSIDE,
               **{var: f"{JUPYTER_STATE_INSIDE}/{sub}" for var, sub in (
                   ("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                   ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"))}}

        info: dict[str, Any] = {"procs": {}, "endpoints": {}, "protocols": list(spec.protocols),
                                "sandbox": True, "memory_mb": spec.resources.memory_mb}
        services: list[Service] = []
        if "desktop" in spec.protocols:
            password = run / "vncpasswd"
            write_owned(password, vnc_password_file(spec.secrets.get("vnc_password", "")),
                        identity)
            # Inside, the display is :0 (private /tmp and network); outside, a link.
            info["display"] = reserve_display(run / "x11" / "X0")
            starting = run / "vnc-starting.sock"
            services.append(Service("vnc", vnc_command(0, None, password,
                                                       unix_path=str(starting))))
            services.append(Service(
                "session", desktop_session_command(spec.image_ref), {"DISPLAY": ":0"},
                wait_for="/tmp/.X11-unix/X0",
                then=publish_when_wm_runs(":0", starting, run / "vnc.sock")))
            info["endpoints"]["desktop"] = unix_endpoint(str(run / "vnc.sock"))
        if "jupyter" in spec.protocols:
            services.append(Service("jupyter", jupyter_command(
                self.python, spec, None, inside, sock=str(run / "jupyter.sock"))))
            info["endpoints"]["jupyter"] = unix_endpoint(str(run / "jupyter.sock"))
        passwd, group = account_files(identity, spec.owner.username, inside,
                                      Path("/etc/passwd").read_text(),
                                      Path("/etc/group").read_text())
        for name, text in (("passwd", passwd), ("group", group)):
            (root / name).write_text(text)
            (root / name).chmod(0o644)
        script = root / "session.sh"
        script.write_text(session_script(services, run / "services"))
        script.chmod(0o644)
        plan = SandboxPlan(
            identity=identity, home=(home, inside), run_dir=run, x11_dir=run / "x11",
            state_dirs=((state, Path(JUPYTER_STATE_INSIDE)),),
            data=tuple((Path(m.source), inside / m.target) for m in spec.mounts),
            python_dirs=python_dirs(self.python), images_dir=images_dir(), script=script,
            files=((root / "passwd", "/etc/passwd"), (root / "group", "/etc/group")))
        options, command = sandbox_command(plan)
        write_args(root / "sandbox.args", options)

        cgroup = self.cgroup(spec.uid)
        cgroup.create(Limits(memory_bytes=spec.resources.memory_mb * 1024 * 1024,
                             cpus=spec.resources.cpus, pids=self.options.pids_max))
        with open(root / "session.log", "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *launcher(root / "sandbox.args", cgroup.procs_files(), command), cwd="/", env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        asyncio.get_running_loop().create_task(proc.wait())  # reaped, never a zombie
        info["procs"]["sandbox"] = {"pid": proc.pid, "ticks": start_ticks(proc.pid)}
        inner = await self._wait_services(run / "services", proc, root)
        info["procs"].update(self._global_pids(cgroup, inner))
        return info

    async def _wait_services(self, path: Path, proc: asyncio.subprocess.Process,
                             root: Path) -> dict[str, int]:
        for _ in range(1200):
            if path.exists():
                found: dict[str, int] = {}
                for line in path.read_text().splitlines():
                    name, _, pid = line.partition(" ")
                    if pid.isdigit():
                        found[name] = int(pid)
                return found
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise BackendError("the session's sandbox did not start: "
                           + (tail(root / "session.log", 3) or "no output"))

    @staticmethod
    def _global_pids(cgroup: InstanceCgroup, inner: dict[str, int]
                     ) -> dict[str, dict[str, int | None]]:
        """Services' pids as seen inside the sandbox -> pids on the host (by NSpid)."""
        by_inner: dict[int, int] = {}
        for pid in cgroup.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) > 1:
                            by_inner.setdefault(int(ids[-1]), pid)
        procs: dict[str, dict[str, int | None]] = {}
        for name, pid in inner.items():
            host = by_inner.get(pid)
            if host is not None:
                procs[name] = {"pid": host, "ticks": start_ticks(host)}
        return procs

    def rotate(self, uid: str, tokens: str, vnc_password: bytes) -> None:
        """Rewrite the session's token and VNC password files (read at each use)."""
        run = self.run_dir(uid)
        if not run.is_dir():
            return
        st = run.stat()
        owner = Identity(st.st_uid, st.st_gid)
        if (run / TOKEN_FILE).exists():
            write_owned(run / TOKEN_FILE, tokens, owner)
        if (run / "vncpasswd").exists():
            write_owned(run / "vncpasswd", vnc_password, owner)

    def oom_reason(self, uid: str, memory_mb: int | None) -> str:
        kills = self.cgroup(uid).oom_kills()
        if not kills:
            return ""
        limit = f" ({memory_mb} MiB)" if memory_mb else ""
        return (f"a process was killed: the flavour's memory limit{limit} was reached"
                + (f" ({kills} times)" if kills > 1 else ""))

    async def cleanup(self, uid: str, display: int | None, remove_run: bool) -> None:
        """After the labelled processes are gone: end stragglers by cgroup, drop the
        groups and the X link (and the run directory on delete)."""
        cgroup = self.cgroup(uid)
        for _ in range(100):
            if not cgroup.pids():
                break
            cgroup.kill_all()
            await asyncio.sleep(0.02)
        cgroup.remove()
        run = self.run_dir(uid)
        release_display(display, run)
        if remove_run and run.exists():
            await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, run)

    def managed(self) -> set[str]:
        """uids of this deployment with a run directory (sessions whose folder is gone)."""
        prefix = f"{self.deployment_id}."
        with contextlib.suppress(OSError):
            return {e.name[len(prefix):] for e in os.scandir(self.options.run_dir)
                    if e.name.startswith(prefix)}
        return set()

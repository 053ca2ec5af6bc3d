"""The local backend: each instance is a few processes on this machine.

Layout of one instance, under ``<sessions_dir>/<uid>/``:

* ``labels.json`` - the instance uid and deployment id (found by :meth:`list_managed`);
* ``home/`` - the session's home and JupyterLab root; ``home/data/<proposal>`` are the
  experiments' data, mounted read-only;
* ``process.json`` - the running processes (pid and start time per service), their ports
  and protocols; absent when stopped;
* ``session.log`` - what the session printed.

Services per protocol: ``jupyter`` runs JupyterLab; ``desktop`` runs TigerVNC's ``Xvnc``
(loopback only, the instance's VNC password) and a desktop session (xfce or openbox) on it.
Processes run in sessions of their own (they survive an Atrium restart) and carry the
instance's labels in their environment (see :mod:`spawners.localproc`), so everything a
session started - kernels, agents - is found and ended by label.

Read-only data: as root, JupyterLab and the desktop session run in a private mount namespace
(``unshare``) where each experiment's folder is bind-mounted read-only: even root inside gets
EROFS, as on a pod's ``readOnly`` volume. Without root, the folders are symlinked and the
data's own file permissions apply.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spawners.base import (
    LABEL_DEPLOYMENT,
    LABEL_INSTANCE,
    Backend,
    BackendError,
    BackendState,
    Checkpoint,
    InstanceSpec,
    Observation,
    ResourceState,
)
from spawners.local_commands import (
    PROFILES,
    desktop_session_command,
    in_mount_namespace,
    jupyter_command,
    vnc_command,
)
from spawners.localproc import (
    ENV_DEPLOYMENT,
    ENV_INSTANCE,
    free_display,
    free_port,
    is_alive,
    labelled_processes,
    start_ticks,
    tail,
    terminate,
)
from spawners.probe import jupyter_ready, rfb_ready
from spawners.vncauth import vnc_password_file


def _can_bind_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


ATRIUM_ROOT = Path(__file__).resolve().parent.parent
TOKEN_FILE = "jupyter-token"  # under the instance's folder: the accepted JupyterLab tokens


def _write_private(path: Path, content: str | bytes) -> None:
    """Replace ``path`` atomically with a file only its owner reads (0600)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    os.replace(tmp, path)


# Which recorded process serves which protocol.
SERVICES = {"jupyter": ("jupyter",), "desktop": ("vnc", "session")}


class LocalBackend(Backend):
    name = "local"

    def __init__(self, deployment_id: str, sessions_dir: Path, python: str) -> None:
        super().__init__(deployment_id)
        self.sessions_dir = sessions_dir
        self.python = python
        self.bind_mounts = _can_bind_mount()
        self._displays: set[int] = set()
        sessions_dir.mkdir(parents=True, exist_ok=True)

    def _dir(self, uid: str) -> Path:
        if not uid.isalnum():
            raise BackendError(f"invalid instance uid {uid!r}")
        return self.sessions_dir / uid

    # --- contract ---------------------------------------------------------------------

    async def create(self, spec: InstanceSpec, checkpoint: Checkpoint) -> BackendState:
        if spec.image_ref not in PROFILES:
            raise BackendError(f"unknown local profile {spec.image_ref!r}; one of "
                               + ", ".join(PROFILES))
        root = self._dir(spec.uid)
        home = root / "home"
        (home / "data").mkdir(parents=True, exist_ok=True)
        labels = {**spec.labels, **self.labels_for(spec.uid)}
        (root / "labels.json").write_text(json.dumps(labels))
        state: BackendState = {"dir": str(root)}
        await checkpoint(state)
        for mount in spec.mounts:
            source = Path(mount.source)
            if not source.is_dir():
                raise BackendError(f"data of experiment {mount.name} not found at {source}")
            target = home / mount.target
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.bind_mounts:
                target.mkdir(exist_ok=True)
            elif not target.is_symlink():
                target.symlink_to(source, target_is_directory=True)
        return await self.start(spec, state, checkpoint)

    async def start(self, spec: InstanceSpec, state: BackendState,
                    checkpoint: Checkpoint) -> BackendState:
        root = self._dir(spec.uid)
        running = self._read(root)
        if running is not None and self._alive(running):
            return {**state, "ports": running["ports"]}  # already started (e.g. before a crash)
        home = root / "home"
        if not home.is_dir():
            raise BackendError("the instance's files are gone; it cannot be started again")
        # Processes of a start interrupted by a crash are not recorded: end them first.
        await terminate(self.deployment_id, spec.uid)
        mounts = [(Path(m.source), home / m.target) for m in spec.mounts] \
            if self.bind_mounts else []
        env = self._env(spec, root)
        info: dict[str, Any] = {"procs": {}, "ports": {}, "protocols": list(spec.protocols)}
        try:
            if "desktop" in spec.protocols:
                await self._start_desktop(spec, root, env, mounts, info)
            if "jupyter" in spec.protocols:
                _write_private(root / TOKEN_FILE, spec.secrets.get("jupyter_token", "") + "\n")
                port = free_port()
                command = in_mount_namespace(
                    jupyter_command(self.python, spec, port, home), mounts)
                info["procs"]["jupyter"] = await self._spawn(root, command, env)
                info["ports"]["jupyter"] = port
        except OSError as err:
            await terminate(self.deployment_id, spec.uid)
            raise BackendError(f"could not start the session: {err}") from err
        finally:
            self._displays.discard(info.get("display", -1))
        (root / "process.json").write_text(json.dumps(info))
        state = {**state, "ports": info["ports"]}
        await checkpoint(state)
        return state

    async def _start_desktop(self, spec: InstanceSpec, root: Path, env: dict[str, str],
                             mounts: list[tuple[Path, Path]], info: dict[str, Any]) -> None:
        display = free_display(taken=self._displays)
        self._displays.add(display)
        info["display"] = display
        port = free_port()
        password = root / "vncpasswd"
        _write_private(password, vnc_password_file(spec.secrets.get("vnc_password", "")))
        info["procs"]["vnc"] = await self._spawn(root, vnc_command(display, port, password), env)
        info["ports"]["desktop"] = port
        # The desktop session needs the X server's socket before it starts.
        for _ in range(200):
            if Path(f"/tmp/.X11-unix/X{display}").exists():
                break
            await asyncio.sleep(0.02)
        session_env = {**env, "DISPLAY": f":{display}"}
        info["procs"]["session"] = await self._spawn(
            root, in_mount_namespace(desktop_session_command(spec.image_ref), mounts),
            session_env)

    def _env(self, spec: InstanceSpec, root: Path) -> dict[str, str]:
        home = root / "home"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(home),
            "USER": spec.owner.username,
            "XDG_RUNTIME_DIR": str(root / "run"),
            "JUPYTER_CONFIG_DIR": str(root / "jupyter" / "config"),
            "JUPYTER_DATA_DIR": str(root / "jupyter" / "data"),
            "JUPYTER_RUNTIME_DIR": str(root / "jupyter" / "runtime"),
            "IPYTHONDIR": str(root / "jupyter" / "ipython"),
            # The token is read from a file the backend can rewrite (rotate_secrets); not
            # in the environment, where every kernel would inherit it.
            "ATRIUM_SESSION_TOKEN_FILE": str(root / TOKEN_FILE),
            # JupyterLab's identity provider (images/jupyter_identity.py) is this Atrium's.
            "PYTHONPATH": str(ATRIUM_ROOT),
            ENV_INSTANCE: spec.uid,
            ENV_DEPLOYMENT: self.deployment_id,
        }

    async def _spawn(self, root: Path, command: list[str], env: dict[str, str]
                     ) -> dict[str, int | None]:
        (root / "run").mkdir(mode=0o700, exist_ok=True)
        with open(root / "session.log", "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=root / "home", env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        # Reap the child when it exits, so it does not linger as a zombie.
        asyncio.get_running_loop().create_task(proc.wait())
        return {"pid": proc.pid, "ticks": start_ticks(proc.pid)}

    async def stop(self, uid: str, state: BackendState) -> BackendState:
        root = self._dir(uid)
        (root / "process.json").unlink(missing_ok=True)  # a stop, not a crash
        await terminate(self.deployment_id, uid)
        return {k: v for k, v in state.items() if k != "ports"}

    async def reboot(self, spec: InstanceSpec, state: BackendState,
                     checkpoint: Checkpoint) -> BackendState:
        state = await self.stop(spec.uid, state)
        return await self.start(spec, state, checkpoint)

    async def delete(self, uid: str, state: BackendState) -> None:
        root = self._dir(uid)
        (root / "process.json").unlink(missing_ok=True)
        await terminate(self.deployment_id, uid)
        if root.exists():
            await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, root)

    async def observe(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                      protocols: tuple[str, ...]) -> Observation:
        obs = self._observe_dir(self._dir(uid))
        if obs.state is not ResourceState.RUNNING:
            return obs
        ready: set[str] = set()
        checks = []
        if "jupyter" in obs.ready:
            checks.append(("jupyter", jupyter_ready(obs.endpoints["jupyter"],
                                                    f"/instances/{uid}/lab/",
                                                    secrets.get("jupyter_token", ""))))
        if "desktop" in obs.ready:
            port = int(obs.endpoints["desktop"].rsplit(":", 1)[1])
            checks.append(("desktop", rfb_ready("127.0.0.1", port)))
        results = await asyncio.gather(*(c for _, c in checks))
        ready = {name for (name, _), ok in zip(checks, results, strict=True) if ok}
        return Observation(obs.state, obs.endpoints, frozenset(ready),
                           backend_state=obs.backend_state)

    rotates_secrets = True

    async def rotate_secrets(self, uid: str, state: BackendState, secrets: Mapping[str, str],
                             keep: Mapping[str, str] | None = None) -> None:
        """Rewrite the token file JupyterLab's identity provider reads at each change and
        the password file Xvnc reads at each authentication: no restart, open connections
        stay (the portal closes those that lost access)."""
        root = self._dir(uid)
        if not root.is_dir():
            raise BackendError("the instance's files are gone")
        tokens = [secrets["jupyter_token"]]
        if keep and keep.get("jupyter_token"):
            tokens.append(keep["jupyter_token"])
        if (root / TOKEN_FILE).exists():
            _write_private(root / TOKEN_FILE, "".join(t + "\n" for t in tokens))
        if (root / "vncpasswd").exists():
            _write_private(root / "vncpasswd", vnc_password_file(secrets["vnc_password"]))

    async def set_keyboard_layout(self, uid: str, state: BackendState, layout: str) -> None:
        info = self._read(self._dir(uid))
        if info is None or "display" not in info:
            raise BackendError("the desktop is not running")
        proc = await asyncio.create_subprocess_exec(
            "setxkbmap", "-display", f":{info['display']}", "-layout", layout,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise BackendError(f"setxkbmap failed: {err.decode(errors='replace').strip()}")

    async def list_managed(self) -> dict[str, Observation]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._list_managed)

    # --- helpers ----------------------------------------------------------------------

    @staticmethod
    def _read(root: Path) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads((root / "process.json").read_text())
            return info
        except (FileNotFoundError, ValueError):
            return None

    @staticmethod
    def _alive(info: dict[str, Any]) -> set[str]:
        return {name for name, p in info["procs"].items() if is_alive(p["pid"], p["ticks"])}

    def _observe_dir(self, root: Path) -> Observation:
        """Process-level view, no probes: ``ready`` and ``processes`` hold the protocols
        whose processes run (``observe`` then probes those)."""
        if not root.is_dir():
            return Observation(ResourceState.GONE)
        info = self._read(root)
        if info is None:
            return Observation(ResourceState.STOPPED, backend_state={"dir": str(root)})
        alive = self._alive(info)
        if not alive:
            reason = tail(root / "session.log", 3) or "the session's processes exited"
            return Observation(ResourceState.FAILED, reason=f"the session exited: {reason}",
                               backend_state={"dir": str(root)})
        endpoints = {p: (f"http://127.0.0.1:{port}" if p == "jupyter"
                         else f"vnc://127.0.0.1:{port}") for p, port in info["ports"].items()}
        running = frozenset(p for p in info["protocols"]
                            if all(s in alive for s in SERVICES[p]))
        return Observation(ResourceState.RUNNING, endpoints, running,
                           backend_state={"dir": str(root), "ports": info["ports"]},
                           processes=running)

    def _list_managed(self) -> dict[str, Observation]:
        found: dict[str, Observation] = {}
        for labels_file in self.sessions_dir.glob("*/labels.json"):
            try:
                labels = json.loads(labels_file.read_text())
            except (OSError, ValueError):
                continue
            if labels.get(LABEL_DEPLOYMENT) == self.deployment_id:
                found[labels[LABEL_INSTANCE]] = self._observe_dir(labels_file.parent)
        # Processes whose folder is gone (removed by hand, half-deleted) are managed too.
        for uid in labelled_processes(self.deployment_id):
            found.setdefault(uid, Observation(ResourceState.RUNNING))
        return found

"""The local backend: each instance is a set of processes on this machine.

Layout of one instance, under ``<sessions_dir>/<uid>/``:

* ``labels.json`` - the instance uid and deployment id (found by :meth:`list_managed`);
* ``home/`` - the session's home and JupyterLab root; ``home/data/<proposal>`` are the
  experiments' data, mounted read-only;
* ``process.json`` - pid, start time and port of the running session (absent when stopped);
* ``session.log`` - what the session printed.

Processes run in a session of their own (they survive an Atrium restart) and carry the
instance's labels in their environment (see :mod:`spawners.localproc`).

Read-only data: as root, the session runs in a private mount namespace (``unshare``) where
each experiment's folder is bind-mounted read-only, so even root inside it gets EROFS, as on
a pod's ``readOnly`` volume. Without root, the folders are symlinked and the data's own file
permissions apply (documented in the README).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

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
from spawners.localproc import (
    ENV_DEPLOYMENT,
    ENV_INSTANCE,
    free_port,
    is_alive,
    labelled_processes,
    start_ticks,
    tail,
    terminate,
)
from spawners.probe import jupyter_ready

IDENTITY_PROVIDER = "images.jupyter_identity.AtriumIdentityProvider"


def _can_bind_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def jupyter_command(python: str, spec: InstanceSpec, port: int, home: Path) -> list[str]:
    """The JupyterLab command line of a session (pure)."""
    return [
        python, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
        f"--ServerApp.base_url={spec.base_url}",
        f"--ServerApp.root_dir={home}",
        f"--ServerApp.identity_provider_class={IDENTITY_PROVIDER}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--ServerApp.terminals_enabled=True",
    ]


def mount_script(mounts: list[tuple[Path, Path]]) -> str:
    """Shell lines that bind each source read-only onto its target (pure)."""
    lines = []
    for source, target in mounts:
        s, t = shlex.quote(str(source)), shlex.quote(str(target))
        lines.append(f"mount --bind {s} {t} && mount -o remount,bind,ro {t}")
    return " && ".join(lines + ['exec "$@"'])


class LocalBackend(Backend):
    name = "local"

    def __init__(self, deployment_id: str, sessions_dir: Path, python: str) -> None:
        super().__init__(deployment_id)
        self.sessions_dir = sessions_dir
        self.python = python
        self.bind_mounts = _can_bind_mount()
        self._children: dict[str, asyncio.subprocess.Process] = {}
        sessions_dir.mkdir(parents=True, exist_ok=True)

    def _dir(self, uid: str) -> Path:
        if not uid.isalnum():
            raise BackendError(f"invalid instance uid {uid!r}")
        return self.sessions_dir / uid

    # --- contract ---------------------------------------------------------------------

    async def create(self, spec: InstanceSpec, checkpoint: Checkpoint) -> BackendState:
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
        running = self._running(root)
        if running is not None:  # idempotent: already started (e.g. before a crash)
            return {**state, **running}
        home = root / "home"
        if not home.is_dir():
            raise BackendError("the instance's files are gone; it cannot be started again")
        # Processes of a start interrupted by a crash are not recorded: end them first.
        await terminate(self.deployment_id, spec.uid)
        port = free_port()
        command = jupyter_command(self.python, spec, port, home)
        if self.bind_mounts and spec.mounts:
            mounts = [(Path(m.source), home / m.target) for m in spec.mounts]
            command = ["unshare", "--mount", "--propagation", "private", "--",
                       "sh", "-c", mount_script(mounts), "atrium-session", *command]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(home),
            "USER": spec.owner.username,
            "JUPYTER_CONFIG_DIR": str(root / "jupyter" / "config"),
            "JUPYTER_DATA_DIR": str(root / "jupyter" / "data"),
            "JUPYTER_RUNTIME_DIR": str(root / "jupyter" / "runtime"),
            "IPYTHONDIR": str(root / "jupyter" / "ipython"),
            "ATRIUM_SESSION_TOKEN": spec.secrets.get("jupyter_token", ""),
            ENV_INSTANCE: spec.uid,
            ENV_DEPLOYMENT: self.deployment_id,
        }
        log = open(root / "session.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            raise BackendError(f"could not start JupyterLab: {err}") from err
        finally:
            log.close()
        self._children[spec.uid] = proc
        asyncio.get_running_loop().create_task(self._reap(spec.uid, proc))
        info = {"pid": proc.pid, "ticks": start_ticks(proc.pid), "port": port}
        (root / "process.json").write_text(json.dumps(info))
        state = {**state, **info}
        await checkpoint(state)
        return state

    async def _reap(self, uid: str, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if self._children.get(uid) is proc:
            del self._children[uid]

    async def stop(self, uid: str, state: BackendState) -> BackendState:
        root = self._dir(uid)
        (root / "process.json").unlink(missing_ok=True)  # a stop, not a crash
        await terminate(self.deployment_id, uid)
        return {k: v for k, v in state.items() if k not in ("pid", "ticks", "port")}

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
        root = self._dir(uid)
        obs = self._observe_dir(root)
        if obs.state is ResourceState.RUNNING and "jupyter" in protocols:
            if await jupyter_ready(obs.endpoints["jupyter"], f"/instances/{uid}/lab/",
                                   secrets.get("jupyter_token", "")):
                return Observation(obs.state, obs.endpoints, frozenset({"jupyter"}),
                                   backend_state=obs.backend_state)
        return obs

    async def list_managed(self) -> dict[str, Observation]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._list_managed)

    # --- helpers ----------------------------------------------------------------------

    def _running(self, root: Path) -> dict[str, int] | None:
        try:
            info = json.loads((root / "process.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        if is_alive(info["pid"], info.get("ticks")):
            return {"pid": info["pid"], "ticks": info.get("ticks"), "port": info["port"]}
        return None

    def _observe_dir(self, root: Path) -> Observation:
        if not root.is_dir():
            return Observation(ResourceState.GONE)
        running = self._running(root)
        if running is not None:
            return Observation(ResourceState.RUNNING,
                               {"jupyter": f"http://127.0.0.1:{running['port']}"},
                               backend_state={"dir": str(root), **running})
        if (root / "process.json").exists():
            reason = tail(root / "session.log", 3) or "the session's process exited"
            return Observation(ResourceState.FAILED, reason=f"JupyterLab exited: {reason}",
                               backend_state={"dir": str(root)})
        return Observation(ResourceState.STOPPED, backend_state={"dir": str(root)})

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

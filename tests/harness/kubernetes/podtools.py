"""Helpers of the kubelet double: timestamps, ``$(VAR)`` expansion, raw watch streams,
process trees (a container's processes, to kill them all like a kubelet kills a cgroup) and
hostPath volume mounts (bind mounts in a private mount namespace)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Json = dict[str, Any]
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def timestamp() -> str:
    """RFC 3339 UTC timestamp, as the API writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Conditions:
    """A pod's conditions, each with the time its status last changed."""

    values: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, time)

    def set(self, kind: str, status: bool) -> None:
        text = "True" if status else "False"
        if self.values.get(kind, ("", ""))[0] != text:
            self.values[kind] = (text, timestamp())

    def render(self) -> list[Json]:
        return [{"type": k, "status": s, "lastTransitionTime": t, "lastProbeTime": None}
                for k, (s, t) in self.values.items()]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined vars replaced, ``$$`` -> ``$``, rest kept."""
    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR_REF.sub(repl, text)


def watch_events(fn: Any, on_open: Any = None, **kwargs: Any) -> Iterator[Json]:
    """Raw watch events (JSON dicts) of list function ``fn`` (no model deserialisation);
    ``on_open(resp)`` gets the response (to shut it down from another thread)."""
    resp = fn(watch=True, _preload_content=False, **kwargs)
    if on_open is not None:
        on_open(resp)
    try:
        buf = b""
        for chunk in resp.stream(65536, decode_content=True):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
    finally:
        resp.release_conn()


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...), None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> dict[int, str]:
    """``root`` and its live descendants, pid -> start time (a container's processes;
    Jupyter kernels run in sessions of their own: process groups do not find them)."""
    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            start[int(entry.name)] = fields[19]
    tree: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in start:
            tree[pid] = start[pid]
            todo.extend(children.get(pid, []))
    return tree


def kill_tree(tree: dict[int, str]) -> None:
    """SIGKILL the processes of a :func:`process_tree` snapshot that still are those
    processes (same start time: a recycled pid is left alone)."""
    for pid, started in tree.items():
        fields = _stat(pid)
        if fields and fields[19] == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class HostMount:
    """A hostPath volume mount of one container: host ``source`` at sandbox ``target``."""

    source: str
    target: Path
    read_only: bool
    kind: str = ""  # the hostPath type ("Directory", "File", "" = no check...)


def sandbox_path(path: str, working_dir: str, sandbox: Path) -> Path:
    """Where container path ``path`` lives in a pod's sandbox: the container's workingDir
    (the session's home) is the sandbox's ``home/`` (the processes' cwd and HOME), other
    absolute paths are under ``rootfs/``."""
    norm = posixpath.normpath(path)
    if working_dir:
        rel = posixpath.relpath(norm, posixpath.normpath(working_dir))
        if rel == ".":
            return sandbox / "home"
        if rel != ".." and not rel.startswith("../"):
            return sandbox / "home" / rel
    return sandbox / "rootfs" / norm.lstrip("/")


def host_mounts(pod_spec: Json, container: Json, sandbox: Path) -> list[HostMount]:
    """The container's mounts of hostPath volumes (``subPath`` honoured), mapped into the
    sandbox with :func:`sandbox_path`. Other volume kinds are not realised."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        host = (volumes.get(mount["name"]) or {}).get("hostPath")
        if host is None:
            continue
        source = posixpath.join(host["path"], mount.get("subPath") or "")
        mounts.append(HostMount(
            source.rstrip("/") or "/", sandbox_path(mount["mountPath"],
                                                    container.get("workingDir") or "", sandbox),
            bool(mount.get("readOnly")), host.get("type") or ""))
    return mounts


@functools.cache
def can_bind_mount() -> bool:
    """True when this process may create private mount namespaces (root + util-linux)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def prepare_mounts(mounts: list[HostMount], bind: bool) -> str:
    """Check the hostPath types and create the mount points; "" when all is well, else the
    kubelet's kind of message (the container then waits, as on a real node). Without
    ``bind``, each target becomes a symlink to its source (read-only is not enforced)."""
    for mount in mounts:
        source = Path(mount.source)
        if mount.kind == "DirectoryOrCreate":
            source.mkdir(parents=True, exist_ok=True)
        if (mount.kind == "Directory" and not source.is_dir()) or (
                mount.kind == "File" and not source.is_file()) or not source.exists():
            return (f"MountVolume.SetUp failed: hostPath type check failed: {mount.source} "
                    f"is not a {mount.kind.lower() or 'path'}")
        mount.target.parent.mkdir(parents=True, exist_ok=True)
        if not bind:
            if not mount.target.is_symlink():
                mount.target.symlink_to(source)
        elif source.is_dir():
            mount.target.mkdir(exist_ok=True)
        else:
            mount.target.touch(exist_ok=True)
    return ""


def in_mount_namespace(argv: list[str], mounts: list[HostMount], path: str,
                       prelude: tuple[str, ...] = ()) -> list[str]:
    """``argv`` run in a private mount namespace where each mount is a bind mount (remounted
    read-only when asked: writes then fail with EROFS, even for root). The command is looked
    up first (``path``), so a missing one fails to start as with a real runtime."""
    if shutil.which(argv[0], path=path) is None:
        raise FileNotFoundError(f"executable file not found: {argv[0]!r}")
    lines = list(prelude)  # more mount commands (e.g. the ServiceAccount token's)
    for mount in mounts:
        source, target = shlex.quote(mount.source), shlex.quote(str(mount.target))
        lines.append(f"mount --bind {source} {target}"
                     + (f" && mount -o remount,bind,ro {target}" if mount.read_only else ""))
    # unshare and sh exec: the process started is the container's process (same pid).
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            " && ".join([*lines, 'exec "$@"']), "kubelet-double-mounts", *argv]

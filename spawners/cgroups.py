"""Per-instance control groups: the flavour's memory, CPU and process count, enforced.

A machine mounts each controller either in a cgroup v1 hierarchy of its own
(``/sys/fs/cgroup/memory``...) or in the v2 unified hierarchy (``/sys/fs/cgroup`` or
``/sys/fs/cgroup/unified``); :func:`detect` finds where ``memory``, ``cpu`` and ``pids``
live, and one instance gets one group per hierarchy, ``<parent>/<deployment>.<uid>``, so
the orphan sweep finds it by name. The file writers are pure (:func:`v1_settings`,
:func:`v2_settings`); :class:`InstanceCgroup` does the I/O.

v1 vs v2, what is written:

* memory: ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes``, no swap beyond) /
  ``memory.max`` (+ ``memory.swap.max`` 0);
* CPU: ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` / ``cpu.max`` "quota period";
* processes (tasks, threads included): ``pids.max`` in both.

OOM kills are counted by the kernel in ``memory.oom_control`` (v1, ``oom_kill N``) or
``memory.events`` (v2, ``oom_kill N``): :meth:`InstanceCgroup.oom_kills`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """The machine lacks a controller, or a group could not be made."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpus: float
    pids: int

    @property
    def cpu_quota_us(self) -> int:
        return max(1000, int(self.cpus * CPU_PERIOD_US))


def v1_settings(limits: Limits) -> dict[str, list[tuple[str, str]]]:
    """controller -> (file, value) in the order they must be written (v1)."""
    mem = str(limits.memory_bytes)
    return {
        "memory": [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", mem)],
        "cpu": [("cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu.cfs_quota_us", str(limits.cpu_quota_us))],
        "pids": [("pids.max", str(limits.pids))],
    }


def v2_settings(limits: Limits) -> list[tuple[str, str]]:
    """(file, value) of one v2 group, in order."""
    return [("memory.max", str(limits.memory_bytes)), ("memory.swap.max", "0"),
            ("cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}"),
            ("pids.max", str(limits.pids))]


@dataclass(frozen=True)
class Layout:
    """Where each controller lives: v1 mount points per controller, the v2 mount."""

    v1: Mapping[str, Path] = field(default_factory=dict)
    v2: Path | None = None
    v2_controllers: frozenset[str] = frozenset()

    def missing(self) -> list[str]:
        return [c for c in CONTROLLERS if c not in self.v1 and c not in self.v2_controllers]


def parse_mounts(mountinfo: str, read_controllers: dict[str, str]) -> Layout:
    """The layout from ``/proc/self/mountinfo`` text (pure); ``read_controllers`` maps a v2
    mount point to its ``cgroup.controllers`` content."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_point, fstype, options = fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup":
            for option in options:
                if option in CONTROLLERS:
                    v1.setdefault(option, Path(mount_point))
        elif fstype == "cgroup2" and v2 is None:
            v2 = Path(mount_point)
    enabled: frozenset[str] = frozenset()
    if v2 is not None:
        enabled = frozenset(read_controllers.get(str(v2), "").split()) & set(CONTROLLERS) - set(v1)
    return Layout(v1, v2, enabled)


def detect() -> Layout:
    text = Path("/proc/self/mountinfo").read_text()
    controllers: dict[str, str] = {}
    for line in text.splitlines():
        tail = line.partition(" - ")[2].split()
        if tail and tail[0] == "cgroup2":
            point = line.split()[4]
            with contextlib.suppress(OSError):
                controllers[point] = (Path(point) / "cgroup.controllers").read_text()
    return parse_mounts(text, controllers)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


class InstanceCgroup:
    """The groups of one instance, named ``<parent>/<name>`` in every hierarchy used."""

    def __init__(self, layout: Layout, parent: str, name: str) -> None:
        self.layout, self.parent, self.name = layout, parent.strip("/"), name
        # v1 controllers may share a mount (cpu,cpuacct): one directory per distinct mount.
        self.v1_dirs = {c: p / self.parent / name for c, p in layout.v1.items()
                        if c in CONTROLLERS}
        self.v2_dir = (layout.v2 / self.parent / name
                       if layout.v2 is not None and layout.v2_controllers else None)

    @property
    def dirs(self) -> list[Path]:
        found = sorted(set(self.v1_dirs.values()))
        return [*found, self.v2_dir] if self.v2_dir is not None else found

    def procs_files(self) -> list[Path]:
        """The files a launcher writes its pid into, to place itself in every group."""
        return [d / "cgroup.procs" for d in self.dirs]

    def create(self, limits: Limits) -> None:
        """Make the groups (again) and write the limits; raises :class:`CgroupError`."""
        try:
            for controller, path in self.v1_dirs.items():
                path.mkdir(parents=True, exist_ok=True)
                for name, value in v1_settings(limits)[controller]:
                    if (path / name).exists():  # memsw exists only with swap accounting
                        _write(path / name, value)
            if self.v2_dir is not None:
                self._enable_v2_controllers()
                self.v2_dir.mkdir(parents=True, exist_ok=True)
                for name, value in v2_settings(limits):
                    if name.split(".")[0] in self.layout.v2_controllers and \
                            (self.v2_dir / name).exists():
                        _write(self.v2_dir / name, value)
        except OSError as err:
            raise CgroupError(f"could not set up the control group {self.name}: {err}") from err

    def _enable_v2_controllers(self) -> None:
        assert self.layout.v2 is not None
        wanted = " ".join(f"+{c}" for c in CONTROLLERS if c in self.layout.v2_controllers)
        node = self.layout.v2
        for part in ["", *Path(self.parent).parts]:
            node = node / part if part else node
            node.mkdir(exist_ok=True)
            _write(node / "cgroup.subtree_control", wanted)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(found)

    def oom_kills(self) -> int:
        """How many processes the kernel killed for the memory limit since the group was made."""
        memory = self.v1_dirs.get("memory")
        source = (memory / "memory.oom_control" if memory is not None
                  else self.v2_dir / "memory.events" if self.v2_dir is not None else None)
        if source is None:
            return 0
        try:
            for line in source.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Remove the (empty) groups; a group with processes left stays (EBUSY)."""
        for d in self.dirs:
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()


def managed_names(layout: Layout, parent: str, prefix: str) -> set[str]:
    """Names of the groups under ``parent`` starting with ``prefix`` (the orphan sweep)."""
    names: set[str] = set()
    roots = [*layout.v1.values(), *([layout.v2] if layout.v2 is not None else [])]
    for root in roots:
        with contextlib.suppress(OSError):
            names.update(e.name for e in os.scandir(root / parent.strip("/"))
                         if e.is_dir() and e.name.startswith(prefix))
    return names

"""Control groups of local instances: the layout found, the files written (v1 for real, v2
against a directory laid out as the kernel does), OOM counts, removal."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

from spawners.cgroups import (
    InstanceCgroup,
    Layout,
    Limits,
    detect,
    managed_names,
    parse_mounts,
    v1_settings,
    v2_settings,
)
from tests.conftest import need

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

LIMITS = Limits(memory_bytes=512 * 2**20, cpus=1.5, pids=64)


def test_v1_and_v2_are_told_apart() -> None:
    hybrid = parse_mounts(MOUNTINFO, {"/sys/fs/cgroup/unified": "hugetlb\n"})
    assert dict(hybrid.v1) == {"cpu": Path("/sys/fs/cgroup/cpu"),
                               "memory": Path("/sys/fs/cgroup/memory"),
                               "pids": Path("/sys/fs/cgroup/pids")}
    assert hybrid.v2_controllers == frozenset() and hybrid.missing() == []
    pure_v2 = parse_mounts("40 1 0:37 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                           {"/sys/fs/cgroup": "cpuset cpu io memory pids"})
    assert pure_v2.v1 == {} and pure_v2.v2_controllers == {"cpu", "memory", "pids"}
    assert parse_mounts("", {}).missing() == ["memory", "cpu", "pids"]


def test_limit_files() -> None:
    assert v2_settings(LIMITS) == [("memory.max", str(512 * 2**20)), ("memory.swap.max", "0"),
                                   ("cpu.max", "150000 100000"), ("pids.max", "64")]
    v1 = v1_settings(LIMITS)
    assert v1["memory"][0] == ("memory.limit_in_bytes", str(512 * 2**20))
    assert v1["cpu"] == [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "150000")]
    assert v1["pids"] == [("pids.max", "64")]


def test_v2_group_is_written_with_controllers_delegated(tmp_path: Path) -> None:
    """The v2 path writer, against a tree shaped like a v2 mount (this machine's v2
    hierarchy has no memory/cpu/pids controller to delegate: they are bound to v1)."""
    root = tmp_path / "unified"
    root.mkdir()
    layout = Layout({}, root, frozenset({"memory", "cpu", "pids"}))
    group = InstanceCgroup(layout, "atrium", "dep.abc")
    target = root / "atrium" / "dep.abc"
    target.mkdir(parents=True)
    for name in ("memory.max", "memory.swap.max", "cpu.max", "pids.max", "memory.events"):
        (target / name).write_text("")
    group.create(LIMITS)
    assert (root / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (root / "atrium" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (target / "memory.max").read_text() == str(512 * 2**20)
    assert (target / "cpu.max").read_text() == "150000 100000"
    assert (target / "pids.max").read_text() == "64"
    assert group.procs_files() == [target / "cgroup.procs"]
    (target / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert group.oom_kills() == 2
    assert managed_names(layout, "atrium", "dep.") == {"dep.abc"}


def test_v1_group_limits_a_real_process() -> None:
    layout = detect()
    need(os.geteuid() == 0 and not layout.missing() and bool(layout.v1),
         "cgroup v1 controllers (as root) are needed")
    group = InstanceCgroup(layout, "atrium-test", f"t{os.getpid()}")
    try:
        group.create(Limits(memory_bytes=64 * 2**20, cpus=0.5, pids=8))
        memory = group.v1_dirs["memory"]
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * 2**20)
        assert (group.v1_dirs["pids"] / "pids.max").read_text().strip() == "8"
        assert (group.v1_dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        # A process placed in the group before exec, allocating past the limit: OOM-killed.
        procs = " ".join(f'"{p}"' for p in group.procs_files())
        hog = subprocess.run(
            ["sh", "-c", f'for f in {procs}; do echo $$ > "$f"; done; exec python3 -c '
                         '"x = bytearray(200 * 2**20); x[::4096] = b\\"\\x01\\" * len(x[::4096])"'],
            capture_output=True)
        assert hog.returncode == -9
        assert group.oom_kills() >= 1
        # A fork loop stops at pids.max.
        forks = subprocess.run(
            ["sh", "-c", f'for f in {procs}; do echo $$ > "$f"; done; '
                         'n=0; while [ $n -lt 50 ]; do sleep 5 & n=$((n+1)); done 2>&1; wait'],
            capture_output=True, text=True)
        assert "fork" in forks.stdout.lower() or "resource" in forks.stdout.lower(), forks
    finally:
        deadline = time.monotonic() + 20
        while group.pids() and time.monotonic() < deadline:
            group.kill_all()
            time.sleep(0.05)
        group.remove()
        assert not any(d.exists() for d in group.dirs)
        for root in layout.v1.values():
            with contextlib.suppress(OSError):
                (root / "atrium-test").rmdir()

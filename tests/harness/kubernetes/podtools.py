"""Helpers of the kubelet double: timestamps, ``$(VAR)`` expansion, raw watch streams and
process trees (a container's processes, to kill them all like a kubelet kills a cgroup)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Json = dict[str, Any]
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def timestamp() -> str:
    """RFC 3339 UTC timestamp, as the API writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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

"""Finding and ending local session processes by their labels.

A local session's processes carry their labels in the environment (``ATRIUM_INSTANCE``,
``ATRIUM_DEPLOYMENT``), which every child inherits: JupyterLab kernels run in sessions of
their own, so a process group alone would miss them. Scanning ``/proc`` finds them all,
even after Atrium itself was killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

ENV_INSTANCE = "ATRIUM_INSTANCE"
ENV_DEPLOYMENT = "ATRIUM_DEPLOYMENT"


def start_ticks(pid: int) -> int | None:
    """The process start time (clock ticks since boot): with the pid, a unique identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # exited, not yet reaped
        return None
    return int(fields[19])


def is_alive(pid: int, ticks: int | None) -> bool:
    current = start_ticks(pid)
    return current is not None and (ticks is None or current == ticks)


def labelled_processes(deployment_id: str) -> dict[str, list[int]]:
    """uid -> pids of every live process labelled with ``deployment_id``."""
    found: dict[str, list[int]] = {}
    want = f"{ENV_DEPLOYMENT}={deployment_id}".encode()
    prefix = f"{ENV_INSTANCE}=".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if want not in env:
            continue
        for item in env:
            if item.startswith(prefix):
                if start_ticks(int(entry.name)) is not None:
                    found.setdefault(item[len(prefix):].decode(), []).append(int(entry.name))
                break
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


async def terminate(deployment_id: str, uid: str, grace: float = 5.0) -> None:
    """End every process labelled ``uid``: SIGTERM, then SIGKILL after ``grace`` seconds.

    Returns only when none is left.
    """
    loop = asyncio.get_running_loop()
    pids = (await loop.run_in_executor(None, labelled_processes, deployment_id)).get(uid, [])
    if not pids:
        return
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        pids = [p for p in pids if start_ticks(p) is not None]
        if not pids:
            break
    for _ in range(3):
        # Kernels may have been started while we waited: look again by label.
        left = (await loop.run_in_executor(None, labelled_processes, deployment_id)).get(uid, [])
        if not left:
            return
        _signal_all(left, signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.02)
            left = [p for p in left if start_ticks(p) is not None]
            if not left:
                break
    raise RuntimeError(f"processes of {uid} survived SIGKILL")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 5) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def free_display(taken: set[int], first: int = 20) -> int:
    """An X display number with no server (no lock file, no socket) and not being started."""
    for n in range(first, first + 1000):
        if n in taken:
            continue
        if Path(f"/tmp/.X{n}-lock").exists() or Path(f"/tmp/.X11-unix/X{n}").exists():
            continue
        return n
    raise RuntimeError("no free X display number")

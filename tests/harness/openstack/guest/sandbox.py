"""A sandbox standing in for a harness VM, booted through the real cloud-init path.

The harness has no hypervisor, so a "VM" is a bubblewrap sandbox on the test machine:

* its own mount, PID, IPC and UTS namespaces (hostname = the server's), all capabilities
  (root in a VM has them; mounts stay inside its mount namespace);
* its own writable "disk" (``<disk>/{etc,home,usr-local,var}``, bound over /etc, /home,
  /usr/local and /var; /etc starts as a copy of the host's, as an image would ship one),
  a private /tmp and /run, the host's /root hidden; the rest of the host read-only (the
  "image": its programs, plus the ``visible`` dirs, e.g. the venv that holds JupyterLab);
* the host's network (deliberate difference: no VM network, so the server's fixed
  127.x address stands in for its NIC, and services asked to listen on 0.0.0.0 listen on
  that address instead; see guest/bin/systemctl);
* the host's whole filesystem, read-only, at :data:`FILE_SERVER` (/run/atrium-lab/host):
  the harness' "file server", where a test mount template points (e.g. device
  ``/run/atrium-lab/host{source}``, fstype ``none``, options ``bind``).

:func:`validate` checks user-data with cloud-init's own schema (Debian's ``cloud-init``);
:func:`boot_argv` builds the command that runs ``guest/init.py`` (what cloud-init would
execute for the user-data: bootcmd, write_files, users, mounts, runcmd) as the sandbox's
init; its processes die with it. Pure builders apart from :func:`prepare_disk`,
:func:`validate` and :func:`boot`. Standard library only (runs in the services venv and
in the tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

GUEST = Path(__file__).resolve().parent
DISK_DIRS = ("etc", "home", "usr-local", "var/log", "var/lib", "var/tmp", "var/mail",
             "var/spool", "var/cache")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_DATA = "/run/atrium-lab/user-data"  # where the guest sees its user-data
FILE_SERVER = "/run/atrium-lab/host"


class GuestError(RuntimeError):
    """The user-data is invalid, or the sandbox cannot be made on this machine."""


def missing_tools() -> list[str]:
    """What this machine lacks to boot guests (empty when ready)."""
    wanted = {"bwrap": "bubblewrap", "cloud-init": "cloud-init", "useradd": "passwd",
              "mount": "mount"}
    missing = [pkg for tool, pkg in wanted.items() if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (to create accounts and mounts in the sandbox)")
    return missing


def validate(user_data: Path, timeout: float = 120) -> None:
    """Raise :class:`GuestError` unless cloud-init's schema check accepts ``user_data``."""
    try:
        proc = subprocess.run(["cloud-init", "schema", "--config-file", str(user_data)],
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GuestError(f"cloud-init schema could not run: {err}") from err
    if proc.returncode != 0:
        raise GuestError(f"invalid user-data: {(proc.stdout + proc.stderr).strip()}")


def prepare_disk(disk: Path) -> None:
    """The VM's writable parts, made on first boot and kept across reboots (like a disk)."""
    if (disk / ".ready").exists():
        return
    shutil.rmtree(disk, ignore_errors=True)
    for sub in DISK_DIRS:
        if sub != "etc":
            (disk / sub).mkdir(parents=True, exist_ok=True)
    shutil.copytree("/etc", disk / "etc", symlinks=True)
    (disk / "var" / "tmp").chmod(0o1777)
    (disk / ".ready").touch()


def boot_argv(disk: Path, user_data: Path, *, hostname: str,
              visible: Sequence[str] = ()) -> list[str]:
    """The bwrap command line of one boot of the guest whose disk is ``disk`` (pure)."""
    argv = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--hostname", hostname, "--cap-add", "ALL",
            "--ro-bind", "/", "/",
            "--bind", str(disk / "etc"), "/etc",
            "--bind", str(disk / "home"), "/home",
            "--bind", str(disk / "usr-local"), "/usr/local",
            "--bind", str(disk / "var"), "/var",
            "--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs", "/root",
            "--proc", "/proc", "--dev", "/dev"]
    made: set[str] = set()
    for path in visible:  # e.g. a venv under the (hidden) /root
        # bwrap would give the missing parents the modes of the host's (0700 for ~/.cache)
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in made:
                made.add(str(parent))
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", path, path]
    argv += ["--ro-bind", "/", FILE_SERVER, "--ro-bind", str(user_data), USER_DATA,
             "/usr/bin/python3", str(GUEST / "init.py"), USER_DATA]
    return argv


def guest_env(*, address: str, lab_path: str = "", lab_pythonpath: str = "",
              extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The guest init's environment: what the "image" provides, nothing of the host's."""
    return {"PATH": f"{GUEST / 'bin'}:{GUEST_PATH}", "LANG": "C.UTF-8",
            "ATRIUM_LAB_ADDRESS": address, "ATRIUM_LAB_PATH": lab_path,
            "ATRIUM_LAB_PYTHONPATH": lab_pythonpath, **(extra or {})}


def boot(disk: Path, user_data: Path, *, hostname: str, address: str, log: Path,
         lab_path: str = "", lab_pythonpath: str = "", visible: Sequence[str] = (),
         extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Boot the guest (``user_data`` checked by :func:`validate` first); returns its
    process, in a process group of its own."""
    prepare_disk(disk)
    argv = boot_argv(disk, user_data, hostname=hostname, visible=visible)
    env = guest_env(address=address, lab_path=lab_path, lab_pythonpath=lab_pythonpath,
                    extra=extra_env)
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)

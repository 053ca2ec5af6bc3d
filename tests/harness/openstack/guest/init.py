"""The init of a harness guest: what cloud-init would execute for the user-data, then reap.

Runs as PID 1 of the sandbox (see sandbox.py) with the host's /usr/bin/python3:
``init.py <user-data>``. Executes, in cloud-init's order, the modules Atrium's boot
templates use: ``bootcmd`` (init stage), ``write_files`` (content/encoding/owner/
permissions/append), ``groups`` and ``users`` (useradd), ``mounts`` (fstab + ``mount -a``),
``runcmd`` (final stage: one shell script, as cloud-init writes it), then deferred
``write_files``; these run once per instance, as in cloud-init (a marker on the guest's
disk). Every boot runs ``bootcmd``; later boots then do what systemd would at start-up:
``mount -a`` and start the units enabled in multi-user.target.wants (guest/bin/systemctl).
Keys it does not execute are listed in the log (cloud-init would act on them; the harness
would not). Then it stays up reaping orphans, as an init does; the sandbox (and every
service it started) ends when it is killed.
"""

from __future__ import annotations

import base64
import gzip
import os
import pwd
import shlex
import subprocess
import sys
import time
from typing import Any

import yaml

BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"
WANTS = "/etc/systemd/system/multi-user.target.wants"
HANDLED = {"bootcmd", "write_files", "groups", "users", "mounts", "runcmd"}
IGNORED = {"atrium"}  # not a cloud-init module: cloud-init itself ignores it


def log(message: str) -> None:
    print(f"[guest-init {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _shell(items: list[Any]) -> str:
    """Commands as cloud-init turns them into a script: lists quoted, strings verbatim."""
    lines = ["#!/bin/sh"]
    for item in items:
        lines.append(" ".join(shlex.quote(str(a)) for a in item)
                     if isinstance(item, list) else str(item))
    return "\n".join(lines) + "\n"


def run_script(name: str, items: list[Any]) -> None:
    path = f"/run/atrium-lab/{name}.sh"
    with open(path, "w") as f:
        f.write(_shell(items))
    os.chmod(path, 0o700)
    code = subprocess.call(["/bin/sh", path], stdin=subprocess.DEVNULL)
    log(f"{name}: exit {code}")


def _content(entry: dict[str, Any]) -> bytes:
    data = entry.get("content", "")
    raw = data.encode() if isinstance(data, str) else bytes(data)
    encoding = str(entry.get("encoding", "text")).lower()
    if encoding in ("b64", "base64", "gz+b64", "gzip+b64", "gz+base64", "gzip+base64"):
        raw = base64.b64decode(raw)
    if encoding.startswith(("gz", "gzip")):
        raw = gzip.decompress(raw)
    return raw


def write_files(entries: list[dict[str, Any]], deferred: bool) -> None:
    for entry in entries:
        if bool(entry.get("defer", False)) != deferred:
            continue
        path = str(entry["path"])
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        with open(path, "ab" if entry.get("append") else "wb") as f:
            f.write(_content(entry))
        os.chmod(path, int(str(entry.get("permissions", "0644")), 8))
        user, _, group = str(entry.get("owner", "root:root")).partition(":")
        subprocess.call(["chown", f"{user}:{group or user}", path])
        log(f"write_files: {path}")


def groups(entries: Any) -> None:
    for entry in entries if isinstance(entries, list) else [entries]:
        names = entry if isinstance(entry, dict) else {str(entry): []}
        for name, members in names.items():
            subprocess.call(["groupadd", "-f", str(name)])
            for member in members or []:
                subprocess.call(["gpasswd", "-a", str(member), str(name)])


def users(entries: list[Any]) -> None:
    for entry in entries:
        if entry == "default" or not isinstance(entry, dict):
            continue  # the image's default user: none in the harness' images
        name = str(entry["name"])
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        argv = ["useradd", "-m"]
        for key, flag in (("uid", "-u"), ("primary_group", "-g"), ("homedir", "-d"),
                          ("shell", "-s"), ("gecos", "-c")):
            if key in entry:
                argv += [flag, str(entry[key])]
        if entry.get("groups"):
            extra = entry["groups"]
            argv += ["-G", ",".join(extra) if isinstance(extra, list) else str(extra)]
        if entry.get("system"):
            argv.append("-r")
        code = subprocess.call([*argv, name])
        log(f"users: {name}: exit {code}")


def mounts(entries: list[list[Any]]) -> None:
    defaults = [None, None, "auto", "defaults,nofail", "0", "2"]
    with open("/etc/fstab", "a") as fstab:
        for entry in entries:
            fields = [str(v) for v in entry] + [str(v) for v in defaults[len(entry):]]
            if fields[1] in ("None", "none"):
                continue
            os.makedirs(fields[1], exist_ok=True)
            fstab.write(" ".join(fields[:6]) + "\tcomment=cloudconfig\n")
    log(f"mounts: mount -a: exit {subprocess.call(['mount', '-a'])}")


def later_boot() -> None:
    """What systemd does when the instance boots again: fstab, then the enabled units."""
    log(f"mount -a: exit {subprocess.call(['mount', '-a'])}")
    units = sorted(os.listdir(WANTS)) if os.path.isdir(WANTS) else []
    if units:
        log(f"systemctl start: exit {subprocess.call(['systemctl', 'start', *units])}")
    log("boot finished (units enabled at first boot started again)")


def reap_forever() -> None:
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


def main(path: str) -> None:
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    os.makedirs("/run/atrium-lab", exist_ok=True)
    for sticky in ("/tmp/.X11-unix", "/tmp/.ICE-unix"):  # what systemd-tmpfiles makes
        os.makedirs(sticky, exist_ok=True)
        os.chmod(sticky, 0o1777)
    not_run = sorted(set(doc) - HANDLED - IGNORED)
    if not_run:
        log(f"not executed by the harness: {', '.join(not_run)}")
    if doc.get("bootcmd"):
        run_script("bootcmd", doc["bootcmd"])
    if os.path.exists(BOOT_FINISHED):
        later_boot()
        reap_forever()
    write_files(doc.get("write_files") or [], deferred=False)
    if doc.get("groups"):
        groups(doc["groups"])
    users(doc.get("users") or [])
    if doc.get("mounts"):
        mounts(doc["mounts"])
    if doc.get("runcmd"):
        run_script("runcmd", doc["runcmd"])
    write_files(doc.get("write_files") or [], deferred=True)
    os.makedirs(os.path.dirname(BOOT_FINISHED), exist_ok=True)
    with open(BOOT_FINISHED, "w") as f:
        f.write(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    log("boot finished")
    reap_forever()


if __name__ == "__main__":
    main(sys.argv[1])

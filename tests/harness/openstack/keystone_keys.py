"""Keystone's key repositories for the harness, made by Keystone's own tool, once.

Keystone signs tokens with Fernet keys and encrypts credentials with another key set, read
from ``[fernet_tokens]``/``[fernet_receipts]`` and ``[credential]`` ``key_repository``
(whose defaults live under /etc/keystone: the harness configs point them at the run dir).
``keystone-manage fernet_setup`` and ``credential_setup`` create them; each start of that
tool costs seconds of CPU, so :func:`ensure` runs them once into the harness cache
(``<cache>/openstack-keystone-keys``, under a file lock, renamed into place when
complete) and :func:`install` copies the repositories into each cloud's data dir (a
throw-away loopback cloud may share its keys with the next one).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from collections.abc import Mapping
from pathlib import Path

from tests.harness.openstack import procs

REPOSITORIES = ("fernet-keys", "credential-keys")


def _conf(keys: Path) -> str:
    """The only options `keystone-manage fernet_setup`/`credential_setup` read here."""
    return "\n".join([
        "[fernet_tokens]", f"key_repository = {keys / 'fernet-keys'}",
        "[fernet_receipts]", f"key_repository = {keys / 'fernet-keys'}",
        "[credential]", f"key_repository = {keys / 'credential-keys'}", ""])


def ensure(venv: Path, cache: Path, env: Mapping[str, str]) -> Path:
    """Return the cached key repositories' parent dir, creating them first if needed."""
    keys = cache / "openstack-keystone-keys"
    if all((keys / repo / "0").exists() for repo in REPOSITORIES):
        return keys
    with procs.file_lock(cache / "openstack-keystone-keys.lock"):
        if all((keys / repo / "0").exists() for repo in REPOSITORIES):
            return keys  # another test run made them while we waited
        wip = keys.with_name(keys.name + ".wip")
        shutil.rmtree(wip, ignore_errors=True)
        wip.mkdir(parents=True)
        conf = wip / "keystone-keys.conf"
        conf.write_text(_conf(wip))
        # keys owned by whoever runs the harness (root on CI machines)
        owner = ["--keystone-user", pwd.getpwuid(os.getuid()).pw_name,
                 "--keystone-group", grp.getgrgid(os.getgid()).gr_name]
        for command in ("fernet_setup", "credential_setup"):
            procs.run([str(venv / "bin" / "keystone-manage"), "--config-file", str(conf),
                       command, *owner], log=wip / "keystone-manage.log", env=env)
        shutil.rmtree(keys, ignore_errors=True)
        wip.rename(keys)
    return keys


def install(keys: Path, data: Path) -> None:
    """Copy the key repositories into ``data`` (mode 0700 dirs, 0600 keys, as made)."""
    data.mkdir(parents=True, exist_ok=True)
    for repo in REPOSITORIES:
        shutil.copytree(keys / repo, data / repo, dirs_exist_ok=True)

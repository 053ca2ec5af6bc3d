"""Helm v4 (the official Go SDK) for the tests, from PyPI's ``helm-python-sdk``.

There is no helm binary in Debian or PyPI that these machines can install; the
``helm-python-sdk`` wheel bundles ``libhelm_c`` (a C ABI over Helm's own Go packages: the
same code the ``helm`` command runs for lint, template, install, upgrade and uninstall) and
binds it with ctypes. It is a test harness part, not a dependency of Atrium: it is installed
once, with pip, into ``${XDG_CACHE_HOME:-~/.cache}/atrium/helm-sdk-<version>`` (by ``./dev``'s
harness step, or here on first use), and put on ``sys.path`` by :func:`load`.

Run ``python -m tests.harness.helm.sdk`` to install it (prints the directory).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

VERSION = "0.2.2"  # helm-python-sdk: Helm SDK v4.2.3


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "atrium" / f"helm-sdk-{VERSION}"


def install() -> Path:
    """Install the SDK into :func:`cache_dir` unless it is there (idempotent, locked)."""
    target = cache_dir()
    stamp = target / ".installed"
    if stamp.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs must not install into one dir
        if stamp.exists():
            return target
        tmp = Path(f"{target}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(tmp), f"helm-python-sdk=={VERSION}"], check=True)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        stamp.touch()
    return target


def load() -> ModuleType:
    """``helm_python``, installed first if needed."""
    path = str(install())
    if path not in sys.path:
        sys.path.insert(0, path)
    import helm_python

    return helm_python


if __name__ == "__main__":
    print(install())

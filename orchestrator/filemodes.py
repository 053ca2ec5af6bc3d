"""The portal's own files are its alone: state directory 0700, database and secrets 0600.

Sessions never see these files (sandboxed sessions do not even have them in their file
system), but other local users of the machine must not read them either.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SECRET_NAMES = ("cookie_secret",)


def secure_state_dir(state_dir: Path, database_url: str) -> None:
    """Tighten the modes of the state directory, the SQLite database and the secrets in it;
    later files are created private too (umask 077)."""
    os.umask(0o077)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    files = [state_dir / name for name in SECRET_NAMES]
    if database_url.startswith("sqlite"):
        db = Path(database_url.split("///", 1)[-1])
        files += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            path.chmod(0o600)

"""Atrium's settings: the one documented place.

Every setting is read from an environment variable ``ATRIUM_<NAME>`` (upper case), so
secrets never live in files in the repository. :func:`load_settings` validates them all at
start-up and raises :class:`SettingsError` naming the variable and what was expected.

| variable | default | meaning |
|---|---|---|
| ATRIUM_STATE_DIR | ./var | where the embedded default keeps database, sessions, secrets |
| ATRIUM_DATABASE_URL | sqlite in STATE_DIR | SQLAlchemy URL (sqlite:///..., postgresql://...) |
| ATRIUM_HOST / ATRIUM_PORT | 127.0.0.1 / 8000 | where the portal listens |
| ATRIUM_PUBLIC_URL | http://HOST:PORT | the URL users reach (origin checks, links) |
| ATRIUM_COOKIE_SECRET | generated in demo mode | signs session cookies; required otherwise |
| ATRIUM_DEMO_MODE | false | enables the development login (demo users, no password) |
| ATRIUM_DEPLOYMENT_ID | atrium | labels every backend resource; one per installation |
| ATRIUM_BACKENDS | local | enabled backends, comma separated |
| ATRIUM_RECONCILE_INTERVAL | 10 | seconds between full reconcile passes |
| ATRIUM_START_TIMEOUT | 180 | seconds a session may take to answer before ERROR |
| ATRIUM_EXPERIMENTS_FILE | (none) | YAML/CSV experiment catalogue to sync from |
| ATRIUM_EXPERIMENTS_SQL_URL | (none) | a user-office database to sync from |
| ATRIUM_EXPERIMENTS_SQL_QUERY | experiments_sync.py | the query: one row per experiment member |
| ATRIUM_EXPERIMENTS_SYNC_INTERVAL | 0 | seconds between periodic syncs (0: never) |
| ATRIUM_DEFAULT_QUOTA | 2 | instances a user may own at once |
| ATRIUM_LOCAL_PYTHON | this interpreter | the Python that runs local JupyterLab sessions |
| ATRIUM_SDK_THREADS | 8 | threads for blocking SDK calls |
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    cookie_secret: str = ""
    demo_mode: bool = False
    deployment_id: str = "atrium"
    backends: tuple[str, ...] = ("local",)
    reconcile_interval: float = 10.0
    start_timeout: float = 180.0
    experiments_file: Path | None = None
    experiments_sql_url: str = ""
    experiments_sql_query: str = ""
    experiments_sync_interval: float = 0.0
    default_quota: int = 2
    local_python: str = sys.executable
    sdk_threads: int = 8
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def sessions_dir(self) -> Path:
        return self.state_dir / "sessions"

    def check_for_serving(self) -> None:
        """What only the portal needs (the CLI's other commands run without it)."""
        if not self.cookie_secret:
            raise SettingsError(
                "ATRIUM_COOKIE_SECRET is not set: give a long random string "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _number(env: dict[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def normalise_database_url(url: str) -> str:
    """Map plain URLs to the async drivers Atrium uses (aiosqlite, asyncpg)."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:"):]
    for prefix in ("postgresql:", "postgres:", "postgresql+psycopg:", "postgresql+psycopg2:"):
        if url.startswith(prefix):
            return "postgresql+asyncpg:" + url[len(prefix):]
    if url.startswith(("sqlite+aiosqlite:", "postgresql+asyncpg:")):
        return url
    raise SettingsError(
        f"ATRIUM_DATABASE_URL={url!r}: expected sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def load_settings(env: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Read and validate the settings from ``env`` (default: the process environment)."""
    env = dict(os.environ if env is None else env)
    state_dir = Path(env.get("ATRIUM_STATE_DIR") or "var").resolve()
    demo = _bool(env, "ATRIUM_DEMO_MODE", False)
    db_url = env.get("ATRIUM_DATABASE_URL") or f"sqlite:///{state_dir / 'atrium.db'}"
    host = env.get("ATRIUM_HOST", "127.0.0.1")
    port = int(_number(env, "ATRIUM_PORT", 8000, minimum=1))
    if port > 65535:
        raise SettingsError(f"ATRIUM_PORT={port}: must be below 65536")
    backends = tuple(b.strip() for b in env.get("ATRIUM_BACKENDS", "local").split(",") if b.strip())
    unknown = set(backends) - {"local", "kubernetes", "openstack"}
    if unknown or not backends:
        raise SettingsError(
            f"ATRIUM_BACKENDS={env.get('ATRIUM_BACKENDS')!r}: choose among local, kubernetes, "
            "openstack"
        )
    cookie_secret = env.get("ATRIUM_COOKIE_SECRET", "")
    if not cookie_secret and demo:
        cookie_secret = _demo_cookie_secret(state_dir)
    elif cookie_secret and len(cookie_secret) < 32:
        raise SettingsError("ATRIUM_COOKIE_SECRET is too short: use at least 32 characters")
    experiments_file = env.get("ATRIUM_EXPERIMENTS_FILE")
    if experiments_file and not Path(experiments_file).is_file():
        raise SettingsError(f"ATRIUM_EXPERIMENTS_FILE={experiments_file!r}: no such file")
    deployment_id = env.get("ATRIUM_DEPLOYMENT_ID", "atrium")
    if not deployment_id.replace("-", "").isalnum() or len(deployment_id) > 40:
        raise SettingsError(
            f"ATRIUM_DEPLOYMENT_ID={deployment_id!r}: letters, digits and '-' only, "
            "at most 40 characters (it becomes a label value)"
        )
    values: dict[str, object] = dict(
        state_dir=state_dir,
        database_url=normalise_database_url(db_url),
        host=host,
        port=port,
        public_url=env.get("ATRIUM_PUBLIC_URL") or f"http://{host}:{port}",
        cookie_secret=cookie_secret,
        demo_mode=demo,
        deployment_id=deployment_id,
        backends=backends,
        reconcile_interval=_number(env, "ATRIUM_RECONCILE_INTERVAL", 10.0, minimum=0.1),
        start_timeout=_number(env, "ATRIUM_START_TIMEOUT", 180.0, minimum=1),
        experiments_file=Path(experiments_file) if experiments_file else None,
        experiments_sql_url=env.get("ATRIUM_EXPERIMENTS_SQL_URL", ""),
        experiments_sql_query=env.get("ATRIUM_EXPERIMENTS_SQL_QUERY", ""),
        experiments_sync_interval=_number(env, "ATRIUM_EXPERIMENTS_SYNC_INTERVAL", 0.0),
        default_quota=int(_number(env, "ATRIUM_DEFAULT_QUOTA", 2)),
        local_python=env.get("ATRIUM_LOCAL_PYTHON") or sys.executable,
        sdk_threads=int(_number(env, "ATRIUM_SDK_THREADS", 8, minimum=1)),
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _demo_cookie_secret(state_dir: Path) -> str:
    """A secret kept in the state dir, so demo logins survive restarts."""
    path = state_dir / "cookie_secret"
    if path.exists():
        return path.read_text().strip()
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.write_text(value)
    path.chmod(0o600)
    return value

"""Migrated template databases, so each test cloud starts from a copy instead of migrating.

Running every service's migrations takes ~40 s on a busy 2-core machine; PostgreSQL copies
a migrated database in well under a second (``CREATE DATABASE ... TEMPLATE``). The
templates hold the schemas, plus Keystone's admin, service users and catalogue (seeded
with placeholder URLs that each cloud rewrites to its ports); they are named
``atrium_os_tmpl_<key>_<service>`` where ``<key>`` hashes the services venv's package
stamp and this harness' migration steps, and are rebuilt when the key changes. A build
runs under a file lock, into ``*_wip`` databases renamed at the very end, so a crashed
build is never mistaken for a finished one; it drops crashed builds and the templates of
other keys created more than :data:`STALE_AFTER` ago (checkouts of different harness
versions share one PostgreSQL: a fresh template of another key may be in use right now).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.harness.openstack import procs

HERE = Path(__file__).resolve().parent
DATABASES = ("keystone", "glance", "placement", "neutron", "nova_api", "nova_cell0",
             "nova_cell1")
PREFIX = "atrium_os_tmpl_"
STALE_AFTER = "1 day"  # a PostgreSQL interval


Seeder = Callable[[Path, dict[str, str]], None]
"""``seed(etc_dir, {service: database})`` adds the rows every cloud starts with."""


def template_key(venv: Path, seed_key: str = "") -> str:
    """Changes whenever the services or the way we migrate (or seed) them change."""
    digest = hashlib.sha256(seed_key.encode())
    stamp = venv / ".atrium-base-hash"
    digest.update(stamp.read_bytes() if stamp.exists() else b"unstamped")
    for source in (HERE / "schema.py", HERE / "neutron_schema.py", HERE / "bootstrap.py",
                   HERE / "etc" / "keystone.conf"):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


def _like(prefix: str) -> str:
    return prefix.replace("_", "\\_") + "%"


def _existing(prefix: str) -> set[str]:
    out = procs.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{_like(prefix)}'")
    return set(out.split()) if out else set()


def _stale(prefix: str, key: str) -> list[str]:
    """Crashed builds, and other keys' templates older than STALE_AFTER (by creation time:
    that of the database's PG_VERSION file)."""
    out = procs.psql(
        f"SELECT datname FROM pg_database WHERE datname LIKE '{_like(prefix)}'"
        f" AND (datname LIKE '%\\_wip' OR (datname NOT LIKE '{_like(prefix + key)}' AND"
        f" (pg_stat_file('base/' || oid || '/PG_VERSION')).modification"
        f" < now() - interval '{STALE_AFTER}'))")
    return sorted(out.split()) if out else []


def ensure_templates(venv: Path, render: procs.ConfigRenderer, lock_dir: Path,
                     env: dict[str, str], seed: Seeder | None = None,
                     seed_key: str = "", prefix: str = PREFIX) -> dict[str, str]:
    """Return {service: template database}, building the templates first if needed.

    ``render(etc_dir, dbs)`` writes the service configs for the databases ``dbs`` (the
    migrations only read the database URLs from them); ``seed`` then runs against the
    migrated databases (``seed_key`` names its version, part of the template key).
    ``prefix`` (default :data:`PREFIX`) lets a test build a set of its own.
    """
    key = template_key(venv, seed_key)
    names = {db: f"{prefix}{key}_{db}" for db in DATABASES}
    if set(names.values()) <= _existing(prefix + key):
        return names
    with procs.file_lock(lock_dir / "openstack-templates.lock"):  # one build at a time
        if set(names.values()) <= _existing(prefix + key):
            return names  # another test run built them while we waited
        procs.drop_databases(_stale(prefix, key) + [f"{n}_wip" for n in names.values()])
        wip = {db: f"{name}_wip" for db, name in names.items()}
        procs.create_databases(list(wip.values()))
        with tempfile.TemporaryDirectory(prefix="atrium-os-schema-") as tmp:
            _migrate(venv, Path(tmp), render, wip, env)
            if seed is not None:
                seed(Path(tmp) / "etc", wip)
        for db, name in names.items():
            procs.psql(f'ALTER DATABASE "{wip[db]}" RENAME TO "{name}"')
    return names


def _migrate(venv: Path, tmp: Path, render: procs.ConfigRenderer, dbs: dict[str, str],
             env: dict[str, str]) -> None:
    etc = tmp / "etc"
    render(etc, dbs)
    # a copy of nova.conf whose main database is cell0, to migrate it without mappings
    nova_conf = (etc / "nova.conf").read_text()
    (etc / "nova-cell0.conf").write_text(nova_conf.replace(
        procs.pg_url(dbs["nova_cell1"]), procs.pg_url(dbs["nova_cell0"])))
    bin_ = venv / "bin"
    steps = [
        [f"{bin_}/keystone-manage", "--config-file", f"{etc}/keystone.conf", "db_sync"],
        [f"{bin_}/glance-manage", "--config-file", f"{etc}/glance-api.conf", "db_sync"],
        [f"{bin_}/placement-manage", "--config-file", f"{etc}/placement.conf", "db", "sync"],
        [f"{bin_}/python", str(HERE / "neutron_schema.py"), f"{etc}/neutron.conf"],
        [f"{bin_}/nova-manage", "--config-file", f"{etc}/nova.conf", "api_db", "sync"],
        [f"{bin_}/nova-manage", "--config-file", f"{etc}/nova.conf", "db", "sync",
         "--local_cell"],
        [f"{bin_}/nova-manage", "--config-file", f"{etc}/nova-cell0.conf", "db", "sync",
         "--local_cell"],
    ]
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(procs.run, argv, log=tmp / f"migrate-{i}.log", env=env,
                               timeout=600) for i, argv in enumerate(steps)]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        raise procs.HarnessError(f"schema migration failed: {failed[0]}")


def clone(templates: dict[str, str], targets: dict[str, str]) -> None:
    """Create each target database as a copy of its service's template."""
    procs.psql(*(f'CREATE DATABASE "{targets[db]}" TEMPLATE "{templates[db]}"'
                 for db in DATABASES))

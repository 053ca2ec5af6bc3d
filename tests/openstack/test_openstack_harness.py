"""The OpenStack harness itself: it builds its templates from scratch, and keeps to its dirs.

The template databases are cached in PostgreSQL, so an ordinary run takes the cached path;
``test_templates_build_from_scratch`` builds a set under a prefix of its own (throw-away
databases, dropped at the end) so the path a fresh machine takes runs every time.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need
from tests.harness.openstack import procs, schema
from tests.harness.openstack.cloud import HERE, HOST_PATHS, SERVICE_USERS, LocalCloud, install

CONFIGS = {"keystone": "keystone.conf", "glance": "glance-api.conf",
           "placement": "placement.conf", "neutron": "neutron.conf", "nova": "nova.conf"}
# one table each migration must have created
TABLES = {"keystone": "local_user", "glance": "images", "placement": "resource_providers",
          "neutron": "ports", "nova_api": "cell_mappings", "nova_cell0": "instances",
          "nova_cell1": "instances"}


def _created_host_paths(before: set[str]) -> set[str]:
    return {p for p in HOST_PATHS if Path(p).exists()} - before


def test_no_service_option_names_a_host_path(openstack_harness: LocalCloud) -> None:
    """Every option of every service that holds a path points into the run dir or the venv.

    Covers the options no test cloud uses today too (SAML certificates, receipts keys,
    cinder mounts...): none may fall back to a default under /etc, /var or /tmp.
    """
    cloud = openstack_harness
    allowed = ":".join(map(str, (cloud.run_dir, cloud.venv, "/dev")))
    proc = subprocess.run(
        [str(cloud.venv / "bin" / "python"), str(HERE / "system_paths.py"), allowed,
         *(f"{svc}={cloud.etc / name}" for svc, name in CONFIGS.items())],
        capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout)
    assert set(reports) == set(CONFIGS)
    assert {svc: r for svc, r in reports.items() if r != {"_missing": []}} == {}


def test_cloud_writes_nothing_under_etc_or_var(openstack_harness: LocalCloud) -> None:
    assert _created_host_paths(openstack_harness.host_paths_before) == set()
    # Keystone's key repositories were made by keystone-manage, into the run dir
    for repo in ("fernet-keys", "credential-keys"):
        path = openstack_harness.data / repo
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert {p.name for p in path.iterdir()} >= {"0", "1"}


def _tables(db: str) -> set[str]:
    out = procs.psql("SELECT table_name FROM information_schema.tables"
                     " WHERE table_schema = 'public'", db=db)
    return set(out.split())


def _oids(names: dict[str, str]) -> dict[str, str]:
    listed = ", ".join(f"'{n}'" for n in names.values())
    out = procs.psql(f"SELECT datname || '=' || oid FROM pg_database WHERE datname IN ({listed})")
    return dict(line.split("=") for line in out.split())


def test_templates_build_from_scratch(tmp_path: Path) -> None:
    """The cold path: migrate every service and seed Keystone into new databases."""
    try:
        venv = install()
    except Exception as err:
        need(False, f"the OpenStack services venv could not be installed: {err}")
    before = {p for p in HOST_PATHS if Path(p).exists()}
    # not a prefix the default one (or an older harness' unescaped LIKE) would match
    prefix = f"atrium_tmpltest_{secrets.token_hex(3)}_"
    cloud = LocalCloud(venv)
    names: dict[str, str] = {}
    try:
        names = cloud.build_templates(prefix=prefix)
        assert set(names) == set(schema.DATABASES)
        assert all(name.startswith(prefix) for name in names.values())
        assert not [n for n in procs.psql(
            f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'").split()
            if n.endswith("_wip")]
        for service, table in TABLES.items():
            assert table in _tables(names[service]), (service, table)
        keystone = names["keystone"]
        users = set(procs.psql("SELECT name FROM local_user", db=keystone).split())
        assert users == {"admin", *SERVICE_USERS}
        projects = set(procs.psql("SELECT name FROM project", db=keystone).split())
        assert {"admin", "service"} <= projects
        roles = set(procs.psql("SELECT name FROM role", db=keystone).split())
        assert {"admin", "member", "reader", "service"} <= roles
        urls = procs.psql("SELECT url FROM endpoint", db=keystone).split()
        # identity x3 (bootstrap) + compute, placement, image, network x2 (public, internal)
        assert len(urls) == 11
        assert all(".atrium-harness.invalid" in url for url in urls)
        assert _created_host_paths(before) == set()

        # the second call takes the cached path: the same databases, not rebuilt
        oids = _oids(names)
        assert cloud.build_templates(prefix=prefix) == names
        assert _oids(names) == oids
    finally:
        procs.drop_databases(sorted(names.values()) + [f"{n}_wip" for n in names.values()])
        cloud.stop()
    assert not Path(cloud.run_dir).exists() or os.environ.get("ATRIUM_OS_KEEP") == "1"


@pytest.mark.parametrize("name", sorted(CONFIGS.values()))
def test_config_templates_set_their_state_dirs(name: str) -> None:
    """Cheap, service-free guard: each template names the run dir's etc/data/logs."""
    text = (HERE / "etc" / name).read_text()
    assert "policy_file = ${etc}/policy.yaml" in text
    assert "lock_path = ${data}/locks" in text

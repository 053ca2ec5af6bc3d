"""`atrium catalog apply/export`: idempotent, a dry-run diff, prune rules, and bad files
refused as a whole with the line of every problem."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator.catalog import apply_spec, dump_catalog, export_catalog
from orchestrator.catalog_spec import CatalogError, parse_text
from orchestrator.db import Database
from orchestrator.models import Image, Plan
from orchestrator.settings import normalise_database_url
from tests.conftest import ROOT, Databases
from tests.quota_helpers import plan_on, seeded, try_launch

GOOD = """\
images:
  - name: Lab
    version: "1"
    protocols: [jupyter]
    backend_refs: {local: jupyterlab}
  - name: Desk
    version: "2"
    protocols: [desktop, jupyter]
flavours:
  - {name: tiny, cpus: 0.5, memory_mb: 1024}
  - name: gpu
    cpus: 8
    memory_mb: 32768
    gpus: 2
    limits: {roles: [STAFF], instruments: [LOKI]}
plans:
  - {image: Lab, flavour: tiny, preset: true}
  - {image: Desk, flavour: gpu, backend: kubernetes}
quotas:
  - {role: STAFF, max_instances: 4, max_gpus: 2}
  - {default: true, max_cpus: 8}
"""


def atrium(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", **env})


@pytest.fixture
def cli_env(databases: Databases, tmp_path: Path) -> dict[str, str]:
    env = {"ATRIUM_STATE_DIR": str(tmp_path / "state"), "ATRIUM_DATABASE_URL": databases.new()}
    assert atrium(env, "db", "upgrade").returncode == 0
    return env


def test_apply_twice_is_a_no_op_and_export_round_trips(cli_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(GOOD)
    first = atrium(cli_env, "catalog", "apply", str(catalog))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "+ image Lab 1", "+ image Desk 2", "+ flavour tiny", "+ flavour gpu",
        "+ plan Lab 1 on tiny (local)", "+ plan Desk 2 on gpu (kubernetes)",
        "+ quota role STAFF", "+ quota default", "8 change(s) applied"]
    second = atrium(cli_env, "catalog", "apply", str(catalog))
    assert second.returncode == 0, second.stderr
    assert second.stdout == "no changes: the database already matches the catalogue\n"
    exported = atrium(cli_env, "catalog", "export", "-o", str(tmp_path / "export.yaml"))
    assert exported.returncode == 0, exported.stderr
    again = atrium(cli_env, "catalog", "apply", "--prune", str(tmp_path / "export.yaml"))
    assert again.stdout.startswith("no changes"), again.stdout + again.stderr
    # A dry run shows the diff and changes nothing.
    catalog.write_text(GOOD.replace("cpus: 0.5, memory_mb: 1024", "cpus: 1, memory_mb: 1024")
                       .replace("local: jupyterlab", "local: lab2"))
    dry = atrium(cli_env, "catalog", "apply", "--dry-run", str(catalog))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "~ image Lab 1: backend_refs.local: 'jupyterlab' -> 'lab2'",
        "~ flavour tiny: cpus: 0.5 -> 1",
        "dry run: 2 change(s) would be made; nothing was changed"]
    after = atrium(cli_env, "catalog", "export")
    assert after.stdout == (tmp_path / "export.yaml").read_text()


BAD = """\
images:
  - name: Lab
    protocols: [jupyter, vnc]
flavours:
  - name: tiny
    cpus: 1
    memory_mb: -512
plans:
  - {image: Lab, flavour: tiny}
  - {image: Missing, flavour: tiny}
"""


def test_a_bad_file_is_refused_with_its_lines_and_changes_nothing(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    assert atrium(cli_env, "catalog", "apply", str(good)).returncode == 0
    before = atrium(cli_env, "catalog", "export").stdout
    bad.write_text(BAD)
    result = atrium(cli_env, "catalog", "apply", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"atrium: {bad}: 3 problem(s), nothing was changed:",
        "  line 3: images[1] (Lab): unknown protocol(s) 'vnc' (expected jupyter, desktop)",
        "  line 7: flavours[1] (tiny): memory_mb must be a whole number above 0 (MB), "
        "not -512",
        "  line 10: plans[2] (Missing tiny): image 'Missing' is not defined in this file's "
        "images"]
    assert result.stdout == ""
    assert atrium(cli_env, "catalog", "export").stdout == before


@pytest.mark.parametrize("change, problem", [
    (("protocols: [jupyter]", "protocols: [jupyter, rdp]"),
     "line 4: images[1] (Lab 1): unknown protocol(s) 'rdp' (expected jupyter, desktop)"),
    (("memory_mb: 32768", "memory_mb: -1"),
     "line 13: flavours[2] (gpu): memory_mb must be a whole number above 0 (MB), not -1"),
    (("{image: Desk, flavour: gpu", "{image: Deks, flavour: gpu"),
     "line 18: plans[2] (Deks gpu): image 'Deks' is not defined in this file's images"),
    (("{image: Lab, flavour: tiny, preset: true}", "{image: Lab, flavour: huge}"),
     "line 17: plans[1] (Lab huge): flavour 'huge' is not defined in this file's flavours"),
    (("limits: {roles: [STAFF]", "limits: {roles: [EMPEROR]"),
     "line 15: flavours[2] (gpu): limits: unknown role(s) 'EMPEROR' (expected ADMIN, STAFF, "
     "SUPPORT, INSTRUMENT_SCIENTIST, GUEST)"),
    (('version: "1"', "version: 1.10"),
     "line 3: images[1] (Lab): version must be text, not 1.1 (quote it)"),
    (("backend: kubernetes", "backend: mainframe"),
     "line 18: plans[2] (Desk gpu): unknown backend 'mainframe' (expected local, kubernetes, "
     "openstack)"),
    (("{image: Desk, flavour: gpu, backend: kubernetes}",
      "{image: Lab, flavour: tiny, preset: true}"),
     "line 18: this plan is already defined on line 17"),
    (("{default: true, max_cpus: 8}", "{default: true, max_cpus: -8}"),
     "line 21: quotas[2]: max_cpus must be a number at least 0, not -8"),
    (("{role: STAFF,", "{role: STAFF, user: bob,"),
     "line 20: quotas[1]: name exactly one of user, group, role, or default: true"),
    (("    gpus: 2\n", "    gpus: 2\n    gpus: 3\n"),
     "line 15: not valid YAML: the key 'gpus' appears twice"),
    (("  - {name: tiny, cpus: 0.5, memory_mb: 1024}", "  - {name: tiny, cpus: 0.5"),
     "line 11: not valid YAML: expected ',' or '}', but got ':'"),
    (("flavours:", "flavors:"), "line 9: unknown section 'flavors' (expected images, flavours, "
                                "plans, quotas)"),
])
def test_each_kind_of_problem_is_reported_with_its_line(change: tuple[str, str],
                                                        problem: str) -> None:
    assert change[0] in GOOD
    with pytest.raises(CatalogError) as err:
        parse_text(GOOD.replace(change[0], change[1]), "c.yaml")
    assert problem in err.value.problems, err.value.problems


@pytest.fixture
async def db(databases: Databases, tmp_path: Path) -> AsyncIterator[Database]:
    database = await seeded(normalise_database_url(databases.new()), tmp_path / "data")
    yield database
    await database.close()


async def test_prune_keeps_what_instances_refer_to(db: Database) -> None:
    medium = await plan_on(db, "medium")
    status, _ = await try_launch(db, "alice", medium, [])
    assert status == 201
    only_small = """\
images:
  - {name: JupyterLab, version: "4", protocols: [jupyter], backend_refs: {local: jupyterlab}}
flavours:
  - {name: small, cpus: 1, memory_mb: 2048}
plans:
  - {image: JupyterLab, flavour: small, preset: true}
"""
    async with db.session() as s:
        changes = [str(c) for c in await apply_spec(s, parse_text(only_small), prune=True)]
        await s.commit()
    # The medium plan was launched from: disabled, not deleted (instances refer to it).
    assert "~ plan JupyterLab 4 on medium (local): enabled: True -> False (kept: 1 " \
           "instance(s) were launched from it)" in changes
    assert "- plan JupyterLab 4 on large-gpu (local)" in changes
    assert "- flavour large-gpu" in changes
    assert "- image Light desktop 2026.11" in changes
    assert not any("quota" in c for c in changes)  # no quotas section: left alone
    async with db.session() as s:
        plans = {(p.flavour.name, p.enabled) for p in (await s.scalars(select(Plan))).all()}
        images = {i.name for i in (await s.scalars(select(Image))).all()}
        assert plans == {("small", True), ("medium", False)}
        assert images == {"JupyterLab"}
        # Applying the same again changes nothing, and export describes what is left.
        assert await apply_spec(s, parse_text(only_small), prune=True) == []
        exported = dump_catalog(await export_catalog(s))
    assert "enabled: false" in exported
    assert await try_launch(db, "alice", medium, []) == (404, f"unknown plan {medium}")

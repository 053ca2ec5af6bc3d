"""Starting a real portal for backend end-to-end tests (Kubernetes, OpenStack).

The portals of ``tests/kubernetes/test_k8s_portal.py`` and
``tests/openstack/test_openstack_portal.py`` run on SQLite and on PostgreSQL
(:data:`PORTAL_DATABASES`): they cover what depends on the database (checkpointed provider
ids surviving kill -9, adoption, the sweep's orphan deletion, capacity releases). The other
end-to-end modules (outages, resilience, the rest of the lifecycle) exercise the providers,
not the database, and run on SQLite only to keep CI within its budget.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.catalog import apply_spec, load_catalog
from orchestrator.catalog_spec import parse_catalog
from orchestrator.db import Database
from orchestrator.settings import normalise_database_url
from tests.conftest import AtriumServer, Databases
from tests.lifetime_helpers import query

PORTAL_DATABASES = ("sqlite", "postgres")


@contextmanager
def portal_database(kind: str, tmp: pytest.TempPathFactory) -> Iterator[str]:
    """A new empty database of ``kind`` for one portal, dropped afterwards."""
    dbs = Databases(kind, tmp)
    try:
        yield dbs.new()
    finally:
        dbs.drop_all()


async def apply_catalog_file(srv: AtriumServer, path: Path) -> None:
    """What `atrium catalog apply` does, in-process (a CLI call is seconds of start-up)."""
    db = Database(normalise_database_url(srv.env["ATRIUM_DATABASE_URL"]))
    try:
        async with db.session() as session:
            changes = await apply_spec(session, parse_catalog(load_catalog(path), str(path)))
            await session.commit()
    finally:
        await db.close()
    assert changes, "the test catalogue changed nothing"


def start_with_catalog(srv: AtriumServer, catalog: Path, users: Sequence[str]) -> None:
    """Seed the demo data, apply ``catalog``, make the users' tokens and start ``srv``.

    The catalogue is applied in a thread of its own (asyncio.run must not touch the tests'
    event loop), and the tokens are made while the portal starts.
    """
    srv.cli("demo", "--seed-only")
    with ThreadPoolExecutor(2) as pool:
        pool.submit(asyncio.run, apply_catalog_file(srv, catalog)).result()
        tokens = [pool.submit(srv.token, user) for user in users]
        try:
            srv.start()
        except BaseException:
            srv.stop()
            raise
        for token in tokens:
            token.result()


def endpoints_of(srv: AtriumServer, uid: str) -> dict[str, str]:
    """What the backend reported (stored on the instance; never shown to members)."""
    (row,) = query(srv.env["ATRIUM_DATABASE_URL"],
                   "SELECT endpoints FROM instances WHERE uid = :uid", uid=uid)
    value = row[0]
    return dict(json.loads(value) if isinstance(value, str) else value)

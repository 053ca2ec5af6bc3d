"""``ATRIUM_SESSION_ORIGINS=path`` (single-user set-ups): sessions under the portal's own
origin, reached with the login cookie directly; no instance hosts exist."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AtriumServer, Databases, cleanup_sessions
from tests.session_hosts import browser_client, session_origin
from tests.sessions import launch, wait_for


@pytest.fixture(scope="module")
def path_server(databases: Databases, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[AtriumServer]:
    srv = AtriumServer(databases.new(), tmp_path_factory.mktemp("path-mode"),
                       ATRIUM_SESSION_ORIGINS="path")
    srv.cli("demo", "--seed-only")
    srv.start()
    yield srv
    srv.stop()
    cleanup_sessions(srv)


def test_path_mode_serves_sessions_on_the_portal(path_server: AtriumServer) -> None:
    alice_api = path_server.client("alice")
    uid = launch(alice_api, "path mode")
    wait_for(alice_api, uid, {"ACTIVE"})
    alice = browser_client(path_server, "alice")
    r = alice.get(f"/instances/{uid}/lab/api/status")
    assert r.status_code == 200 and r.json()["started"]
    assert "sandbox" not in r.headers.get("Content-Security-Policy", "")
    r = alice.get(f"/instances/{uid}/desktop")
    assert r.status_code in (200, 403, 404)  # a page of the portal, not a redirect
    # No instance hosts in this mode: such names are unknown.
    r = httpx.get(f"{path_server.url}/instances/{uid}/lab/api/status",
                  headers={"Host": session_origin(path_server, uid).split("//")[1],
                           "Authorization": f"Bearer {path_server.token('alice')}"})
    assert r.status_code == 421
    alice_api.delete(f"/api/v1/instances/{uid}")
    wait_for(alice_api, uid, {"DELETED"})

"""Login sessions end (demo logins) when demo mode is switched off, and at logout. A second
Atrium on the same database plays the demo server. The idle timeout and the lifetime are
crossed on a scripted clock in tests/test_login_windows.py (no sleeping here).

Its demo logins use accounts the provider tests never log in to: an account used by a
demo login belongs to someone, and a first provider login may not claim it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AtriumServer
from tests.oidc.conftest import COOKIE_SECRET, OidcStack, xsrf


@pytest.fixture(scope="module")
def demo(oidc: OidcStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AtriumServer]:
    srv = AtriumServer(oidc.server.env["ATRIUM_DATABASE_URL"], tmp_path_factory.mktemp("demo"),
                       ATRIUM_DEMO_MODE="true", ATRIUM_COOKIE_SECRET=COOKIE_SECRET)
    srv.start()
    yield srv
    srv.stop()


def demo_login(server: AtriumServer, username: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, follow_redirects=False, timeout=30)
    page = client.get("/login")
    assert "Demo mode" in page.text and f'value="{username}"' in page.text
    r = client.post("/login", data={"username": username, "_xsrf": xsrf(client)})
    assert r.status_code == 302, r.text
    assert client.get("/api/v1/me").json()["username"] == username
    return client


def test_a_demo_login_dies_when_demo_mode_is_off(demo: AtriumServer, oidc: OidcStack) -> None:
    client = demo_login(demo, "erin")
    # Same database, same cookie secret, demo mode off: the demo login is not honoured.
    elsewhere = httpx.Client(base_url=oidc.url, timeout=30)
    elsewhere.cookies.set("atrium_session", client.cookies["atrium_session"],
                          domain="127.0.0.1")
    assert elsewhere.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me").status_code == 200


def test_logout_revokes_a_demo_login(demo: AtriumServer) -> None:
    client = demo_login(demo, "gina")
    session = client.cookies["atrium_session"]
    r = client.post("/logout", data={"_xsrf": xsrf(client)})
    assert r.status_code == 302 and r.headers["location"] == "/login"
    thief = httpx.Client(base_url=demo.url, timeout=30)
    thief.cookies.set("atrium_session", session, domain="127.0.0.1")
    assert thief.get("/api/v1/me").status_code == 401

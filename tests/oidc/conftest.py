"""Fixtures: a real OpenID Connect provider (npm oidc-provider) and an Atrium logging in
through it, per database (SQLite and PostgreSQL), with demo mode OFF.

With ``CI=true`` a provider that cannot be installed or started fails the run.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import AtriumServer, Databases, free_port, need
from tests.harness.oidc import (
    OidcProvider,
    ProviderClient,
    ProviderUnavailable,
    ProviderUser,
    install,
)

ROLE_GROUPS = "ADMIN=atrium-admins;STAFF=/beamline-staff;SUPPORT=it-support"
RECHECK = 2.0  # seconds between provider-session checks (short, so tests can see them)
COOKIE_SECRET = secrets.token_hex(32)


def provider_users() -> list[ProviderUser]:
    return [
        ProviderUser("alice", "alice-pw", "Alice Adams", "alice@example.org", ["scientists"]),
        # Keycloak-style group paths, mapped through "/beamline-staff".
        ProviderUser("carol", "carol-pw", "Carol Chen", "carol@example.org",
                 ["/beamline-staff", "/scientists"]),
        ProviderUser("admin", "admin-pw", "Ada Admin", "admin@example.org", ["atrium-admins"]),
        # Not in the user office's list: created at first login.
        ProviderUser("oidc.hana", "hana-pw", "Hana Hill", "hana@example.org", ["it-support"]),
        ProviderUser("oidc.ivan", "ivan-pw", "Ivan Ide", "ivan@example.org", []),
        ProviderUser("oidc.judy", "judy-pw", "Judy Jones", "judy@example.org", []),
        ProviderUser("oidc.kim", "kim-pw", "Kim Kerr", "kim@example.org", []),
        # An admin whose admin group is taken away during a test (test_oidc_revocation.py).
        ProviderUser("oidc.lee", "lee-pw", "Lee Lund", "lee@example.org", ["atrium-admins"]),
        ProviderUser("bad name", "x", "Bad Name", "bad@example.org", []),
        # Identity and deprovisioning (test_oidc_identity.py): dave's account exists
        # already; leo gets disabled at the provider, mia loses her admin group.
        ProviderUser("dave", "dave-pw", "Dave Dunn", "dave@example.org", ["it-support"]),
        ProviderUser("oidc.leo", "leo-pw", "Leo Lane", "leo@example.org", ["beamline-staff"]),
        ProviderUser("oidc.mia", "mia-pw", "Mia Moss", "mia@example.org", ["atrium-admins"]),
        ProviderUser("oidc.noa", "noa-pw", "Noa Nash", "noa@example.org", []),
    ]


@dataclass
class OidcStack:
    provider: OidcProvider
    server: AtriumServer

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def oidc_modules() -> Path:
    try:
        return install()
    except ProviderUnavailable as err:
        need(False, f"the OIDC test provider cannot be installed: {err}")
        raise


def start_stack(databases: Databases, tmp: Path, modules: Path, **env: str) -> OidcStack:
    server = AtriumServer(databases.new(), tmp / "atrium", **{
        "ATRIUM_DEMO_MODE": "false", "ATRIUM_COOKIE_SECRET": COOKIE_SECRET, **env})
    client = ProviderClient("atrium", secrets.token_urlsafe(24),
                            [f"{server.url}/login/oidc/callback"], [f"{server.url}/logout/done"],
                            f"{server.url}/login/oidc/backchannel-logout")
    provider = OidcProvider(modules, tmp / "provider", free_port(), provider_users(), [client])
    try:
        provider.start()
    except ProviderUnavailable as err:
        need(False, str(err))
    server.env.update({
        "ATRIUM_OIDC_ISSUER": provider.issuer, "ATRIUM_OIDC_CLIENT_ID": client.client_id,
        "ATRIUM_OIDC_CLIENT_SECRET": client.client_secret,
        "ATRIUM_OIDC_SCOPES": "openid profile email groups",
        "ATRIUM_OIDC_ROLE_GROUPS": ROLE_GROUPS,
        "ATRIUM_OIDC_RECHECK_INTERVAL": str(RECHECK),
    })
    server.cli("demo", "--seed-only")  # users synced from the "user office", experiments
    try:
        server.start()
    except BaseException:
        provider.stop()
        raise
    return OidcStack(provider, server)


@pytest.fixture(scope="session")
def oidc(databases: Databases, tmp_path_factory: pytest.TempPathFactory,
         oidc_modules: Path) -> Iterator[OidcStack]:
    """Atrium (demo mode off) with a real provider, shared by the tests of one database."""
    stack = start_stack(databases, tmp_path_factory.mktemp("oidc"), oidc_modules)
    yield stack
    stack.server.stop()
    stack.provider.stop()


# --- logging in over HTTP, as a browser would ---------------------------------------------


def browser(stack: OidcStack) -> httpx.Client:
    return httpx.Client(base_url=stack.url, follow_redirects=False, timeout=30)


def follow(client: httpx.Client, response: httpx.Response, stop: str) -> httpx.Response:
    """Follow redirects until one points at a URL starting with ``stop`` (not fetched)."""
    for _ in range(10):
        location = response.headers.get("location", "")
        if response.status_code not in (302, 303) or location.startswith(stop):
            return response
        response = client.get(httpx.URL(str(response.url)).join(location))
    raise AssertionError("too many redirects")


def to_callback(stack: OidcStack, client: httpx.Client, username: str,
                next_url: str = "/") -> str:
    """Start a login, sign in at the provider, return the callback URL (not yet opened)."""
    callback = f"{stack.url}/login/oidc/callback"
    r = follow(client, client.get("/login/oidc", params={"next": next_url}), callback)
    if r.status_code == 200 and 'name="password"' in r.text:  # the provider's form
        action = re.search(r'action="([^"]+)"', r.text)
        assert action is not None, r.text
        r = client.post(httpx.URL(str(r.url)).join(action.group(1)), data={
            "login": username, "password": stack.provider.users[username].password})
        r = follow(client, r, callback)
    location = r.headers.get("location", "")
    assert r.status_code in (302, 303) and location.startswith(callback), (r.status_code,
                                                                           r.text[:500])
    return location


def login(stack: OidcStack, username: str, client: httpx.Client | None = None,
          next_url: str = "/") -> httpx.Client:
    """A client logged in to Atrium through the provider as ``username``."""
    client = client or browser(stack)
    r = client.get(to_callback(stack, client, username, next_url))
    assert r.status_code == 302, r.text[:2000]
    assert r.headers["location"] == next_url
    return client


def xsrf(client: httpx.Client) -> str:
    """The XSRF token a page's form carries (tornado's double-submit cookie)."""
    if "_xsrf" not in client.cookies:
        client.get("/tokens")
    if "_xsrf" not in client.cookies:
        # No form was served (not logged in): any value the cookie and the form agree on
        # passes tornado's double-submit check, as a browser's own would.
        client.cookies.set("_xsrf", secrets.token_hex(16), domain="127.0.0.1")
    return str(client.cookies["_xsrf"])


def end_provider_session(stack: OidcStack, client: httpx.Client,
                         response: httpx.Response | None = None) -> httpx.Response:
    """Complete the provider's logout page (which a browser auto-submits) and return the
    provider's last answer. Without ``response``, visit end_session directly (a logout
    done elsewhere than in Atrium)."""
    if response is None:
        response = client.get(f"{stack.provider.issuer}/session/end")
    assert response.status_code == 200, response.text[:500]
    action = re.search(r'<form id="op.logoutForm" method="post" action="([^"]+)"', response.text)
    token = re.search(r'name="xsrf" value="([^"]+)"', response.text)
    assert action and token, response.text[:1000]
    return client.post(httpx.URL(str(response.url)).join(action.group(1)),
                       data={"xsrf": token.group(1), "logout": "yes"})

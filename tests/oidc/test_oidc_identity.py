"""Login identity and deprovisioning against the real provider: a first login never takes
over an account that is someone's (an admin links it), and a user disabled at the provider,
or whose admin group is removed there, loses logins, tokens and roles at the next provider
check, not at their next login."""

from __future__ import annotations

import time

import httpx

from tests.oidc.conftest import RECHECK, OidcStack, browser, login, to_callback, xsrf


def me(client: httpx.Client) -> httpx.Response:
    return client.get("/api/v1/me")


def new_token(client: httpx.Client) -> str:
    r = client.post("/api/v1/tokens", json={"name": "scripts"},
                    headers={"X-XSRFToken": xsrf(client)})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def bearer(stack: OidcStack, token: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)


def test_an_existing_account_is_not_taken_over_until_an_admin_links_it(oidc: OidcStack
                                                                       ) -> None:
    # dave's account exists and belongs to someone known elsewhere (another provider).
    oidc.server.cli("user", "link", "dave", "old-sub", "--issuer", "https://old.example.org")
    sub = oidc.provider.users["dave"].sub
    client = browser(oidc)
    r = client.get(to_callback(oidc, client, "dave"))
    assert r.status_code == 403
    assert ("an Atrium account named &#39;dave&#39; already exists and is not linked to your "
            "identity at this provider") in r.text
    assert f"Your identity at the provider is &#39;{sub}&#39;" in r.text
    assert me(client).status_code == 401 and "atrium_session" not in client.cookies
    # A forged second attempt changes nothing: the refusal is decided by the database.
    client = browser(oidc)
    assert client.get(to_callback(oidc, client, "dave")).status_code == 403
    # The admin links the account to this identity: the next login is dave.
    oidc.server.cli("user", "link", "dave", sub)
    r = me(login(oidc, "dave"))
    assert r.status_code == 200 and r.json()["username"] == "dave"
    assert r.json()["roles"] == ["SUPPORT"]
    # Linking a subject that is now dave's to another account is refused.
    result = oidc.server.cli("user", "link", "bob", sub, check=False)
    assert result.returncode == 2 and "linked to another account" in result.stderr


def test_a_user_disabled_at_the_provider_loses_logins_and_tokens_at_the_next_check(
        oidc: OidcStack) -> None:
    first, second = login(oidc, "oidc.leo"), login(oidc, "oidc.leo")
    assert me(first).json()["roles"] == ["STAFF"]
    script = bearer(oidc, new_token(first))
    assert me(script).status_code == 200
    oidc.provider.update_user("oidc.leo", disabled=True)
    try:
        time.sleep(RECHECK + 0.5)
        # The first request after the recheck interval asks the provider: refused as a
        # disabled account, so every login and token of the user ends, not just this one.
        assert me(first).status_code == 401
        assert me(second).status_code == 401
        assert me(script).status_code == 401
        r = first.get("/")
        assert r.status_code == 302 and r.headers["location"].startswith("/login")
        # The provider refuses the login itself too.
        again = browser(oidc)
        callback = f"{oidc.url}/login/oidc/callback"
        r = again.get("/login/oidc")
        while r.status_code in (302, 303) and not r.headers["location"].startswith(callback):
            r = again.get(httpx.URL(str(r.url)).join(r.headers["location"]))
        r = again.post(httpx.URL(str(r.url)).join(
            r.text.split('action="', 1)[1].split('"', 1)[0]),
            data={"login": "oidc.leo", "password": "leo-pw"})
        assert "Account is disabled." in r.text
    finally:
        oidc.provider.update_user("oidc.leo", disabled=False)
    # Re-enabled at the provider: a new login works, the STAFF role follows the groups
    # again, and the old token stays revoked.
    client = login(oidc, "oidc.leo")
    assert me(client).json()["roles"] == ["STAFF"]
    assert me(script).status_code == 401


def test_an_admin_group_removed_at_the_provider_removes_admin_at_the_next_check(
        oidc: OidcStack) -> None:
    client = login(oidc, "oidc.mia")
    assert me(client).json()["roles"] == ["ADMIN"]
    script = bearer(oidc, new_token(client))
    assert script.get("/api/v1/admin/images").status_code == 200
    oidc.provider.update_user("oidc.mia", groups=["scientists"])
    try:
        time.sleep(RECHECK + 0.5)
        r = me(client)  # this request runs the provider check
        assert r.status_code == 200  # still logged in: only the role went
        deadline = time.monotonic() + 10
        while me(client).json()["roles"] and time.monotonic() < deadline:
            time.sleep(0.2)  # the check's result applies to the requests after it
        assert me(client).json()["roles"] == []
        assert client.get("/api/v1/admin/images").status_code == 403
        assert script.get("/api/v1/admin/images").status_code == 403
        assert me(script).status_code == 200  # the token keeps the user's remaining rights
    finally:
        oidc.provider.update_user("oidc.mia", groups=["atrium-admins"])


def test_a_user_who_only_runs_scripts_is_deprovisioned_by_the_sweep(oidc: OidcStack) -> None:
    """No browser request after the user is disabled: the background sweep of provider
    sessions notices, and the API token stops working."""
    client = login(oidc, "oidc.noa")
    script = bearer(oidc, new_token(client))
    oidc.provider.update_user("oidc.noa", disabled=True)
    try:
        deadline = time.monotonic() + 6 * RECHECK + 10
        while me(script).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert me(script).status_code == 401
    finally:
        oidc.provider.update_user("oidc.noa", disabled=False)
    assert me(client).status_code == 401  # the login went with it, unasked

"""API tokens (UI and API) and CSRF protection, for a user logged in through the provider."""

from __future__ import annotations

import datetime as dt
import re

import httpx

from tests.oidc.conftest import OidcStack, login, xsrf


def bearer(stack: OidcStack, token: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"},
                        timeout=30)


def test_state_changing_posts_need_the_csrf_token(oidc: OidcStack) -> None:
    client = login(oidc, "alice")
    form = {"action": "create", "name": "csrf probe", "expires_in_days": "7"}
    r = client.post("/tokens", data=form)
    assert r.status_code == 403 and "_xsrf" in r.text
    r = client.post("/tokens", data={**form, "_xsrf": "forged-value"})
    assert r.status_code == 403
    r = client.post("/tokens", data={**form, "_xsrf": xsrf(client)})
    assert r.status_code == 201 and "csrf probe" in r.text
    # The same for the cookie-authenticated API and for logging out.
    body = {"name": "api csrf probe"}
    r = client.post("/api/v1/tokens", json=body)
    assert r.status_code == 403
    r = client.post("/api/v1/tokens", json=body, headers={"X-XSRFToken": xsrf(client)})
    assert r.status_code == 201, r.text
    assert client.post("/logout").status_code == 403
    assert client.get("/api/v1/me").status_code == 200  # still logged in
    r = client.post("/", data={"name": "x", "plan_id": "1"})  # the launch form
    assert r.status_code == 403


def test_token_lifecycle_through_the_api(oidc: OidcStack) -> None:
    client = login(oidc, "carol")
    headers = {"X-XSRFToken": xsrf(client)}
    r = client.post("/api/v1/tokens", json={"name": "analysis scripts", "expires_in_days": 30},
                    headers=headers)
    assert r.status_code == 201, r.text
    created = r.json()
    token = created["token"]
    assert token.startswith("atr_") and created["prefix"] == token[:12]
    assert created["state"] == "active" and r.headers["Cache-Control"] == "no-store"
    expires = dt.datetime.fromisoformat(created["expires_at"].rstrip("Z"))
    assert abs(expires - dt.datetime.utcnow() - dt.timedelta(days=30)) < dt.timedelta(minutes=5)
    script = bearer(oidc, token)
    assert script.get("/api/v1/me").json()["username"] == "carol"
    listed = client.get("/api/v1/tokens").json()
    mine = next(t for t in listed if t["id"] == created["id"])
    assert "token" not in mine and mine["name"] == "analysis scripts"
    assert token not in client.get("/api/v1/tokens").text
    # A token cannot mint tokens (a leaked one would outlive its expiry through them).
    r = script.post("/api/v1/tokens", json={"name": "child"})
    assert r.status_code == 403 and "browser login" in r.json()["error"]["message"]
    # Nobody else can revoke it.
    alice = login(oidc, "alice")
    r = alice.delete(f"/api/v1/tokens/{created['id']}", headers={"X-XSRFToken": xsrf(alice)})
    assert r.status_code == 404
    assert script.get("/api/v1/me").status_code == 200
    # Revoked: refused from the very next request (the cache entry is dropped).
    r = client.delete(f"/api/v1/tokens/{created['id']}", headers=headers)
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    r = script.get("/api/v1/me")
    assert r.status_code == 401 and "authentication required" in r.json()["error"]["message"]


def test_token_lifecycle_through_the_page(oidc: OidcStack) -> None:
    client = login(oidc, "oidc.hana")
    r = client.post("/tokens", data={"action": "create", "name": "laptop",
                                     "expires_in_days": "", "_xsrf": xsrf(client)})
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store"
    match = re.search(r"<code class=\"token\" data-token>(atr_[^<]+)</code>", r.text)
    assert match is not None
    token = match.group(1)
    script = bearer(oidc, token)
    script.get("/api/v1/me").raise_for_status()  # warm the token cache
    page = client.get("/tokens")
    assert token not in page.text and token[:12] in page.text  # shown once, then the prefix
    row = re.search(r'<tr data-token-id="(\d+)">\s*<td>laptop</td>', page.text)
    assert row is not None and "never" not in page.text  # every token expires (default)
    r = client.post("/tokens", data={"action": "revoke", "token_id": row.group(1),
                                     "_xsrf": xsrf(client)})
    assert r.status_code == 302
    assert script.get("/api/v1/me").status_code == 401
    assert 'tok-revoked">revoked' in client.get("/tokens").text


def test_bad_token_requests_are_refused_clearly(oidc: OidcStack) -> None:
    client = login(oidc, "alice")
    headers = {"X-XSRFToken": xsrf(client)}
    for body, words in [({}, "give the token a name"),
                        ({"name": "x" * 101}, "longer than 100"),
                        ({"name": "t", "expires_in_days": 0}, "between 1 and 365"),
                        ({"name": "t", "expires_in_days": 366}, "ATRIUM_TOKEN_MAX_DAYS"),
                        ({"name": "t", "expires_in_days": "soon"}, "whole number of days")]:
        r = client.post("/api/v1/tokens", json=body, headers=headers)
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    r = client.post("/tokens", data={"action": "create", "name": " ", "_xsrf": xsrf(client)})
    assert r.status_code == 400 and "give the token a name" in r.text


def test_cli_tokens_keep_working(oidc: OidcStack) -> None:
    token = oidc.server.cli("token", "create", "alice", "--name", "ops",
                            "--expires-days", "2").stdout.strip()
    assert bearer(oidc, token).get("/api/v1/me").json()["username"] == "alice"
    doc = httpx.get(f"{oidc.url}/api/v1/openapi.json").json()
    assert {"/tokens", "/tokens/{id}"} <= set(doc["paths"])


def test_tokens_expire_by_default_and_no_later_than_the_maximum(oidc: OidcStack) -> None:
    client = login(oidc, "oidc.ivan")
    headers = {"X-XSRFToken": xsrf(client)}
    for body in ({"name": "no lifetime"}, {"name": "null lifetime", "expires_in_days": None}):
        r = client.post("/api/v1/tokens", json=body, headers=headers)
        assert r.status_code == 201, r.text
        expires = dt.datetime.fromisoformat(r.json()["expires_at"].rstrip("Z"))
        assert abs(expires - dt.datetime.utcnow() - dt.timedelta(days=90)) \
            < dt.timedelta(minutes=5)
    r = client.post("/api/v1/tokens", json={"name": "forever", "expires_in_days": 100_000},
                    headers=headers)
    assert r.status_code == 400 and "between 1 and 365" in r.json()["error"]["message"]
    page = client.get("/tokens").text
    assert '<option value="90" selected>' in page and 'value=""' not in page
    assert oidc.server.cli("token", "create", "oidc.ivan", "--expires-days", "400",
                           check=False).returncode != 0

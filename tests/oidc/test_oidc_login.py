"""Logging in through a real OpenID Connect provider: users, roles, refusals, logout."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.oidc.conftest import (
    RECHECK,
    OidcStack,
    browser,
    end_provider_session,
    login,
    to_callback,
    xsrf,
)


def me(client: httpx.Client) -> httpx.Response:
    return client.get("/api/v1/me")


def test_first_login_creates_the_user_with_mapped_roles(oidc: OidcStack) -> None:
    client = login(oidc, "oidc.hana")
    r = me(client)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": r.json()["id"], "username": "oidc.hana", "email": "hana@example.org",
                        "name": "Hana Hill", "roles": ["SUPPORT"]}
    page = client.get("/")
    assert page.status_code == 200 and "My instances" in page.text
    assert "oidc.hana · support" in page.text
    cookie = next(c for c in client.cookies.jar if c.name == "atrium_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert cookie.get_nonstandard_attr("SameSite") == "Lax"


def test_a_later_login_updates_name_email_and_roles(oidc: OidcStack) -> None:
    login(oidc, "oidc.ivan")
    oidc.provider.update_user("oidc.ivan", name="Ivan Ide-Smith", email="ivan@new.example.org",
                              groups=["atrium-admins", "beamline-staff"])
    try:
        r = me(login(oidc, "oidc.ivan"))
        assert r.json()["name"] == "Ivan Ide-Smith"
        assert r.json()["email"] == "ivan@new.example.org"
        assert r.json()["roles"] == ["ADMIN", "STAFF"]
        oidc.provider.update_user("oidc.ivan", groups=[])
        assert me(login(oidc, "oidc.ivan")).json()["roles"] == []  # the provider took them away
    finally:
        oidc.provider.update_user("oidc.ivan", groups=[])


def test_user_office_accounts_are_linked_by_username(oidc: OidcStack) -> None:
    # alice and carol were synced from the user office before they ever logged in.
    alice = login(oidc, "alice")
    proposals = {e["proposal"] for e in alice.get("/api/v1/experiments").json()}
    assert proposals == {"20261001", "20261002"}
    assert me(alice).json()["roles"] == []
    carol = me(login(oidc, "carol")).json()
    assert carol["roles"] == ["STAFF"] and carol["name"] == "Carol Chen"


def test_an_unusable_username_is_refused_clearly(oidc: OidcStack) -> None:
    client = browser(oidc)
    r = client.get(to_callback(oidc, client, "bad name"))
    assert r.status_code == 403
    assert "the username &#39;bad name&#39; from the provider is not usable" in r.text
    assert me(client).status_code == 401


def test_login_returns_to_the_page_asked_for(oidc: OidcStack) -> None:
    client = browser(oidc)
    r = client.get("/tokens")
    assert r.status_code == 302 and r.headers["location"] == "/login?next=%2Ftokens"
    login(oidc, "alice", client, next_url="/tokens")
    # An absolute or scheme-relative "next" is never followed off the site.
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example/"):
        login(oidc, "alice", client, next_url="/")
        url = to_callback(oidc, client, "alice", next_url=evil)
        assert client.get(url).headers["location"] == "/"


TAMPERED: list[tuple[dict[str, Any], str]] = [
    ({"sign": "rogue"}, "signature does not verify with the provider&#39;s keys"),
    ({"sign": "none"}, "the ID token is unsigned or uses a signature algorithm"),
    ({"set": {"exp": 1_000_000_000, "iat": 999_999_000}}, "the ID token has expired"),
    ({"set": {"iss": "https://evil.example"}}, "it was issued by another provider"),
    ({"set": {"aud": "someone-else"}}, "it was issued for another application"),
    ({"set": {"aud": ["someone-else", "atrium"], "azp": "someone-else"}},
     "it was issued for another application (authorized party"),
    ({"set": {"nonce": "guessed"}}, "its nonce does not match this login"),
    ({"replay": True}, "its nonce does not match this login"),
    ({"unset": ["sub"]}, "the ID token lacks the &#39;sub&#39; claim"),
]


@pytest.mark.parametrize("change, words", TAMPERED,
                         ids=["forged", "unsigned", "expired", "issuer", "audience", "azp",
                              "nonce", "replayed", "no-subject"])
def test_a_bad_id_token_is_refused_with_a_clear_message(oidc: OidcStack, change: dict[str, Any],
                                                        words: str) -> None:
    login(oidc, "oidc.judy")  # a genuine token exists to replay
    client = browser(oidc)
    url = to_callback(oidc, client, "oidc.judy")
    oidc.provider.tamper(**change)
    r = client.get(url)
    assert r.status_code == 403, r.text[:500]
    assert "Login refused: " in r.text and words in r.text
    assert "atrium_session" not in client.cookies
    assert me(client).status_code == 401


def test_a_replayed_answer_is_refused(oidc: OidcStack) -> None:
    client = browser(oidc)
    url = to_callback(oidc, client, "alice")
    bound = client.cookies["atrium_oidc_state"]
    assert client.get(url).status_code == 302
    # The same answer again, in the same browser: its state cookie is gone.
    r = client.get(url)
    assert r.status_code == 400 and "was not started in this browser" in r.text
    # Even with the state cookie put back, the pending login was consumed.
    replayer = browser(oidc)
    replayer.cookies.set("atrium_oidc_state", bound, domain="127.0.0.1", path="/login/oidc")
    r = replayer.get(url)
    assert r.status_code == 400 and "already used or is too old (a replayed state)" in r.text
    assert me(replayer).status_code == 401


def test_an_answer_from_another_browser_is_refused(oidc: OidcStack) -> None:
    """Login CSRF: an attacker's own callback URL opened in the victim's browser."""
    attacker = browser(oidc)
    url = to_callback(oidc, attacker, "oidc.judy")
    victim = browser(oidc)
    r = victim.get(url)
    assert r.status_code == 400 and "was not started in this browser" in r.text
    assert me(victim).status_code == 401


def test_a_provider_error_is_shown(oidc: OidcStack) -> None:
    client = browser(oidc)
    start = client.get("/login/oidc")
    state = httpx.URL(start.headers["location"]).params["state"]
    r = client.get("/login/oidc/callback", params={
        "error": "access_denied", "error_description": "the user said no", "state": state})
    assert r.status_code == 400
    assert "the identity provider did not log you in: the user said no" in r.text


def test_logout_ends_the_atrium_and_the_provider_session(oidc: OidcStack) -> None:
    client = login(oidc, "carol")
    session = client.cookies["atrium_session"]
    r = client.post("/logout", data={"_xsrf": xsrf(client)})
    assert r.status_code == 302
    end = httpx.URL(r.headers["location"])
    assert str(end).startswith(f"{oidc.provider.issuer}/session/end")
    assert end.params["post_logout_redirect_uri"] == f"{oidc.url}/logout/done"
    assert end.params["id_token_hint"].count(".") == 2
    r = end_provider_session(oidc, client, client.get(end))
    assert r.status_code == 303 and r.headers["location"].startswith(f"{oidc.url}/logout/done")
    done = client.get(r.headers["location"])
    assert "You are logged out of Atrium and of your identity provider" in done.text
    assert me(client).status_code == 401
    # The old cookie is worth nothing: the session was revoked, not just forgotten.
    thief = browser(oidc)
    thief.cookies.set("atrium_session", session, domain="127.0.0.1")
    assert me(thief).status_code == 401
    # Logging in again asks for the password: the provider session is over too.
    r = client.get("/login/oidc")
    r = client.get(r.headers["location"])
    r = client.get(httpx.URL(str(r.url)).join(r.headers["location"]))
    assert r.status_code == 200 and 'name="password"' in r.text


def test_a_logout_elsewhere_ends_the_atrium_login_at_once(oidc: OidcStack) -> None:
    """Back-channel logout: the provider tells Atrium when its session ends."""
    client = login(oidc, "alice")
    other = login(oidc, "carol")
    assert me(client).status_code == 200
    end_provider_session(oidc, client)  # e.g. logout in another application
    assert me(client).status_code == 401
    r = client.get("/")
    assert r.status_code == 302 and r.headers["location"].startswith("/login")
    assert me(other).status_code == 200  # only that provider session


def test_without_back_channel_the_periodic_check_ends_the_login(oidc: OidcStack) -> None:
    oidc.provider.backchannel(False)
    try:
        client = login(oidc, "alice")
        end_provider_session(oidc, client)
        time.sleep(RECHECK + 0.5)
        r = client.get("/")
        assert r.status_code == 302 and r.headers["location"].startswith("/login")
        assert me(client).status_code == 401
    finally:
        oidc.provider.backchannel(True)


def logout_token(oidc: OidcStack, key: Any = None, **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": oidc.provider.issuer, "aud": "atrium", "iat": now, "exp": now + 120,
              "jti": secrets.token_hex(8), "sub": oidc.provider.users["oidc.kim"].sub,
              "events": {"http://schemas.openid.net/event/backchannel-logout": {}}, **changes}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "test-key-1"}, claims, key or oidc.provider.key)


@pytest.mark.parametrize("changes, words", [
    ({"key": RSAKey.generate_key(2048)}, "signature does not verify"),
    ({"events": None, "nonce": "n"}, "lacks the back-channel logout event"),
    ({"nonce": "n"}, "must not carry a nonce"),
    ({"iat": 1_000_000_000, "exp": 4_000_000_000}, "too old"),
    ({"aud": "someone-else"}, "issued for another application"),
    ({"sub": None}, "names neither a session nor a subject"),
])
def test_a_bad_logout_token_is_refused(oidc: OidcStack, changes: dict[str, Any],
                                       words: str) -> None:
    client = login(oidc, "oidc.kim")
    r = httpx.post(f"{oidc.url}/login/oidc/backchannel-logout",
                   data={"logout_token": logout_token(oidc, **changes)})
    assert r.status_code == 400 and words in r.json()["error_description"], r.text
    assert me(client).status_code == 200


def test_a_logout_token_by_subject_ends_every_login_of_the_user(oidc: OidcStack) -> None:
    first, second = login(oidc, "oidc.kim"), login(oidc, "oidc.kim")
    r = httpx.post(f"{oidc.url}/login/oidc/backchannel-logout",
                   data={"logout_token": logout_token(oidc)})
    assert r.status_code == 200, r.text
    assert me(first).status_code == 401 and me(second).status_code == 401


def test_a_live_provider_session_keeps_the_login(oidc: OidcStack) -> None:
    client = login(oidc, "carol")
    for _ in range(2):
        time.sleep(RECHECK + 0.5)
        assert me(client).status_code == 200  # checked with the provider, and refreshed


def test_the_demo_login_is_refused_outside_demo_mode(oidc: OidcStack) -> None:
    client = browser(oidc)
    page = client.get("/login")
    assert "Log in with your facility account" in page.text
    assert 'name="username"' not in page.text and "Demo mode" not in page.text
    r = client.post("/login", data={"username": "admin", "_xsrf": xsrf(client)})
    assert r.status_code == 403
    assert "the development login is off" in r.text
    assert me(client).status_code == 401

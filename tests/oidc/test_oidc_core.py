"""The pure part of the OIDC login: ID token validation, claim mapping, settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from authlib.oidc.core.util import create_half_hash
from joserfc import jwt
from joserfc.jwk import RSAKey

from orchestrator.models import Role
from orchestrator.settings import SettingsError, load_settings, parse_role_groups
from web.oidc_core import (
    ClaimMapping,
    LoginRefused,
    UnknownSigningKey,
    authorization_url,
    validate_id_token,
    validate_logout_token,
)
from web.pages import safe_next

ISSUER = "https://id.example.org/realms/facility"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"})
JWKS = {"keys": [KEY.as_dict(private=False)]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(key: Any = KEY, header: dict[str, Any] | None = None, **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "atrium", "sub": "u-1", "exp": now + 300, "iat": now,
              "nonce": "n-1", **changes}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(header or {"alg": "RS256", "kid": "k1"}, claims, key)


def check(raw: str, **kwargs: Any) -> dict[str, Any]:
    return validate_id_token(raw, JWKS, **{"issuer": ISSUER, "client_id": "atrium",
                                           "nonce": "n-1", **kwargs})


def test_a_valid_token_gives_its_claims() -> None:
    assert check(token(email="a@example.org"))["email"] == "a@example.org"
    # A refreshed ID token carries no nonce; none is expected then.
    assert check(token(nonce=None), nonce=None)["sub"] == "u-1"


def refused(raw: str, words: str, **kwargs: Any) -> None:
    with pytest.raises(LoginRefused) as caught:
        check(raw, **kwargs)
    assert words in caught.value.message


def test_forged_and_unsigned_tokens_are_refused() -> None:
    rogue = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    refused(token(rogue), "signature does not verify")
    with pytest.raises(UnknownSigningKey):
        check(token(rogue, {"alg": "RS256", "kid": "k2"}))
    head, body, _ = token().split(".")
    refused(f"{head}.{body}.", "signature does not verify")  # signature stripped
    refused("not-a-jwt", "malformed")
    # Algorithm confusion: HS256 "signed" with the provider's public key as the secret.
    head = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
    signing_input = f"{head}.{body}".encode()
    mac = hmac.new(KEY.as_pem(private=False), signing_input, hashlib.sha256).digest()
    refused(f"{head}.{body}.{b64(mac)}", "signature algorithm")


@pytest.mark.parametrize("changes, words", [
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "has expired"),
    ({"iss": "https://evil.example"}, "issued by another provider"),
    ({"aud": "other"}, "issued for another application"),
    ({"aud": ["other", "atrium"], "azp": "other"}, "authorized party"),
    ({"nonce": "n-2"}, "nonce does not match"),
    ({"nonce": None}, "lacks the 'nonce' claim"),
    ({"iat": int(time.time()) + 3600}, "issue time is in the future"),
    ({"sub": None}, "lacks the 'sub' claim"),
    ({"exp": None}, "lacks the 'exp' claim"),
])
def test_bad_claims_are_refused(changes: dict[str, Any], words: str) -> None:
    refused(token(**changes), words)


EVENT = {"http://schemas.openid.net/event/backchannel-logout": {}}


def test_logout_tokens() -> None:
    def logout(**changes: Any) -> dict[str, Any]:
        return validate_logout_token(token(**{"nonce": None, "events": EVENT, **changes}),
                                     JWKS, issuer=ISSUER, client_id="atrium")

    assert logout(sid="s-1")["sid"] == "s-1"
    assert logout(sub=None, sid="s-1")["sid"] == "s-1"  # a sid may stand for the sub
    for changes, words in [({"nonce": "n-1"}, "must not carry a nonce"),
                           ({"events": None}, "lacks the back-channel logout event"),
                           ({"events": {"other": {}}}, "lacks the back-channel logout event"),
                           ({"sub": None}, "names neither a session nor a subject"),
                           ({"iat": int(time.time()) - 3600}, "too old"),
                           ({"iss": "https://evil.example"}, "issued by another provider")]:
        with pytest.raises(LoginRefused, match=words):
            logout(**changes)
    with pytest.raises(LoginRefused, match="the logout token's signature does not verify"):
        logout(key=RSAKey.generate_key(2048, parameters={"kid": "k1"}))


def test_expiry_allows_a_little_clock_skew() -> None:
    now = int(time.time())
    assert check(token(exp=now - 30))
    refused(token(exp=now - 30), "has expired", leeway=0)


def test_at_hash_binds_the_access_token() -> None:
    at_hash = create_half_hash("the-access-token", "RS256").decode()
    assert check(token(at_hash=at_hash), access_token="the-access-token")
    refused(token(at_hash=at_hash), "does not belong to the access token",
            access_token="another-access-token")


def test_authorization_url_uses_pkce_s256() -> None:
    url = authorization_url("https://id.example.org/auth?kc_idp_hint=x", client_id="atrium",
                            redirect_uri="https://atrium.example.org/login/oidc/callback",
                            scopes=["openid", "email"], state="s", nonce="n",
                            code_verifier="v" * 64)
    assert url.startswith("https://id.example.org/auth?kc_idp_hint=x&response_type=code&")
    assert "code_challenge_method=S256" in url and "scope=openid+email" in url
    assert "code_verifier" not in url and "v" * 64 not in url


MAPPING = ClaimMapping(groups="realm_access.roles",
                       role_groups={"ADMIN": ["/atrium-admins"], "STAFF": ["staff", "bl"]})


def test_claims_map_to_an_identity() -> None:
    who = MAPPING.identity({"sub": "u-1", "preferred_username": "jdoe", "email": "j@x.org",
                            "name": "J Doe", "realm_access": {"roles": ["/bl", "other"]}})
    assert (who.username, who.email, who.name) == ("jdoe", "j@x.org", "J Doe")
    assert who.groups == ["/bl", "other"] and who.roles == {Role.STAFF}
    assert MAPPING.managed_roles == {Role.ADMIN, Role.STAFF}
    spaced = ClaimMapping(role_groups={"ADMIN": ["atrium-admins"]})
    assert spaced.identity({"sub": "s", "preferred_username": "u",
                            "groups": "atrium-admins, x"}).roles == {Role.ADMIN}
    assert spaced.identity({"sub": "s", "preferred_username": "u"}).groups == []


@pytest.mark.parametrize("claims, words", [
    ({"preferred_username": "x"}, "no subject"),
    ({"sub": "s"}, "no 'preferred_username' claim"),
    ({"sub": "s", "preferred_username": "../root"}, "is not usable"),
    ({"sub": "s", "preferred_username": "x" * 65}, "is not usable"),
])
def test_unusable_claims_are_refused(claims: dict[str, Any], words: str) -> None:
    with pytest.raises(LoginRefused, match=words):
        MAPPING.identity(claims)


def base_env(**env: str) -> dict[str, str]:
    return {"ATRIUM_DEMO_MODE": "1", "ATRIUM_OIDC_ISSUER": ISSUER,
            "ATRIUM_OIDC_CLIENT_ID": "atrium", **env}


def test_oidc_settings(tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    s = load_settings(base_env(ATRIUM_STATE_DIR=str(tmp_path),
                               ATRIUM_OIDC_CLIENT_SECRET_FILE=str(secret),
                               ATRIUM_OIDC_ROLE_GROUPS="admin=a1,a2; STAFF=s",
                               ATRIUM_PUBLIC_URL="https://atrium.example.org"))
    assert s.oidc_enabled and s.oidc_client_secret == "s3cret"
    assert s.oidc_role_groups == {"ADMIN": ("a1", "a2"), "STAFF": ("s",)}
    assert s.secure_cookies and "s3cret" not in repr(s)
    assert not load_settings({"ATRIUM_STATE_DIR": str(tmp_path)}).oidc_enabled


@pytest.mark.parametrize("env, words", [
    ({"ATRIUM_OIDC_ISSUER": "http://id.example.org"}, "http:// only on loopback"),
    ({"ATRIUM_OIDC_ISSUER": "ftp://x"}, "ATRIUM_OIDC_ISSUER"),
    ({"ATRIUM_OIDC_CLIENT_ID": ""}, "ATRIUM_OIDC_CLIENT_ID is required"),
    ({"ATRIUM_OIDC_ISSUER": "", "ATRIUM_OIDC_CLIENT_ID": "x"}, "ATRIUM_OIDC_ISSUER is not"),
    ({"ATRIUM_OIDC_SCOPES": "profile email"}, "must include openid"),
    ({"ATRIUM_OIDC_ROLE_GROUPS": "WIZARD=x"}, "ATRIUM_OIDC_ROLE_GROUPS"),
    ({"ATRIUM_OIDC_ROLE_GROUPS": "ADMIN="}, "ROLE=group"),
    ({"ATRIUM_OIDC_USERNAME_CLAIM": "a..b"}, "ATRIUM_OIDC_USERNAME_CLAIM"),
    ({"ATRIUM_OIDC_CLIENT_SECRET_FILE": "/nonexistent"}, "ATRIUM_OIDC_CLIENT_SECRET_FILE"),
    ({"ATRIUM_OIDC_RECHECK_INTERVAL": "-1"}, "ATRIUM_OIDC_RECHECK_INTERVAL"),
    ({"ATRIUM_SESSION_IDLE_TIMEOUT": "0"}, "ATRIUM_SESSION_IDLE_TIMEOUT"),
])
def test_bad_oidc_settings_name_the_variable(tmp_path: Any, env: dict[str, str],
                                             words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        load_settings(base_env(ATRIUM_STATE_DIR=str(tmp_path), **env))


def test_role_groups_accumulate_and_loopback_http_is_fine(tmp_path: Any) -> None:
    assert parse_role_groups("STAFF=a;STAFF=b") == {"STAFF": ("a", "b")}
    assert load_settings(base_env(ATRIUM_STATE_DIR=str(tmp_path),
                                  ATRIUM_OIDC_ISSUER="http://127.0.0.1:9000/")).oidc_issuer \
        == "http://127.0.0.1:9000"


@pytest.mark.parametrize("target, expected", [
    ("/instances/abc?x=1", "/instances/abc?x=1"), ("https://evil.example/", "/"),
    ("//evil.example/", "/"), ("/\\evil.example/", "/"), ("", "/"), (None, "/"),
])
def test_only_same_site_paths_are_followed_after_login(target: str | None,
                                                       expected: str) -> None:
    assert safe_next(target) == expected

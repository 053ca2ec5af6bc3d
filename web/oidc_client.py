"""OpenID Connect, the part that talks to the provider (tornado's AsyncHTTPClient).

Discovery and the JWKS are cached (an hour; the JWKS is refetched at once when a token
names an unknown key, which is how providers roll keys). Nothing here blocks the loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from orchestrator.settings import Settings
from web.oidc_core import (
    ALLOWED_ALGORITHMS,
    ClaimMapping,
    LoginRefused,
    UnknownSigningKey,
    end_session_url,
    validate_id_token,
    validate_logout_token,
)

log = logging.getLogger("atrium.oidc")
CACHE_SECONDS = 3600.0
TIMEOUT = 15.0


class ProviderUnreachable(LoginRefused):
    """The provider did not answer, or not in a usable way (a 502 for the user)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 502)


class SessionEnded(Exception):
    """The provider refused the refresh token: its session is over."""


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str
    end_session_endpoint: str
    algorithms: tuple[str, ...]

    @classmethod
    def parse(cls, doc: Mapping[str, Any], expected_issuer: str) -> ProviderMetadata:
        """Validate a discovery document: its issuer must be exactly the configured one."""
        if doc.get("issuer") != expected_issuer:
            raise ProviderUnreachable(
                f"the provider's discovery document names the issuer {doc.get('issuer')!r}, "
                f"not {expected_issuer!r} (check ATRIUM_OIDC_ISSUER)")
        missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")
                   if not isinstance(doc.get(k), str)]
        if missing:
            raise ProviderUnreachable(f"the provider's discovery document lacks {missing}")
        algs = tuple(a for a in doc.get("id_token_signing_alg_values_supported", ["RS256"])
                     if a in ALLOWED_ALGORITHMS) or ("RS256",)
        return cls(issuer=doc["issuer"], authorization_endpoint=doc["authorization_endpoint"],
                   token_endpoint=doc["token_endpoint"], jwks_uri=doc["jwks_uri"],
                   userinfo_endpoint=str(doc.get("userinfo_endpoint") or ""),
                   end_session_endpoint=str(doc.get("end_session_endpoint") or ""),
                   algorithms=algs)


class OidcClient:
    """Atrium as a relying party of one provider (one instance per process)."""

    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.oidc_issuer
        self.client_id = settings.oidc_client_id
        self.client_secret = settings.oidc_client_secret
        self.scopes = settings.oidc_scopes
        self.label = settings.oidc_label
        base = settings.public_url.rstrip("/")
        self.redirect_uri = f"{base}/login/oidc/callback"
        self.post_logout_redirect_uri = f"{base}/logout/done"
        self.mapping = ClaimMapping(
            username=settings.oidc_username_claim, email=settings.oidc_email_claim,
            name=settings.oidc_name_claim, groups=settings.oidc_groups_claim,
            role_groups=settings.oidc_role_groups)
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._jwks: tuple[float, dict[str, Any]] | None = None

    # --- HTTP -----------------------------------------------------------------------------

    async def _fetch(self, url: str, *, form: Mapping[str, str] | None = None,
                     bearer: str = "", client_auth: bool = False) -> tuple[int, Any]:
        """(status, parsed JSON) of a GET, or of a form POST when ``form`` is given."""
        headers = {"Accept": "application/json"}
        body = None
        if form is not None:
            payload = dict(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            if client_auth and not self.client_secret:
                payload["client_id"] = self.client_id  # a public client (PKCE only)
            body = urlencode(payload)
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        request = HTTPRequest(
            url, method="POST" if form is not None else "GET", headers=headers, body=body,
            connect_timeout=TIMEOUT, request_timeout=TIMEOUT, follow_redirects=False,
            # client_secret_basic (RFC 6749 2.3.1: both parts form-encoded first).
            auth_username=_form(self.client_id) if client_auth and self.client_secret else None,
            auth_password=_form(self.client_secret) if client_auth and self.client_secret
            else None)
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as err:
            raise ProviderUnreachable(f"the identity provider cannot be reached ({err})") from None
        if response.code == 599:
            raise ProviderUnreachable(
                f"the identity provider cannot be reached ({response.error})")
        try:
            data = json.loads(response.body or b"null")
        except ValueError:
            data = None
        return response.code, data

    async def metadata(self, force: bool = False) -> ProviderMetadata:
        now = time.monotonic()
        if self._metadata is not None and not force and self._metadata[0] > now:
            return self._metadata[1]
        code, doc = await self._fetch(f"{self.issuer}/.well-known/openid-configuration")
        if code != 200 or not isinstance(doc, dict):
            raise ProviderUnreachable(f"the provider's discovery document answered {code}")
        meta = ProviderMetadata.parse(doc, self.issuer)
        self._metadata = (now + CACHE_SECONDS, meta)
        return meta

    async def jwks(self, force: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        if self._jwks is not None and not force and self._jwks[0] > now:
            return self._jwks[1]
        code, keys = await self._fetch((await self.metadata()).jwks_uri)
        if code != 200 or not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            raise ProviderUnreachable(f"the provider's JWKS answered {code}")
        self._jwks = (now + CACHE_SECONDS, keys)
        return keys

    # --- the flows --------------------------------------------------------------------------

    async def exchange_code(self, code: str, code_verifier: str) -> dict[str, Any]:
        """The token response for an authorization code (with the PKCE verifier)."""
        meta = await self.metadata()
        status, data = await self._fetch(meta.token_endpoint, client_auth=True, form={
            "grant_type": "authorization_code", "code": code,
            "redirect_uri": self.redirect_uri, "code_verifier": code_verifier})
        if status != 200 or not isinstance(data, dict):
            err = data if isinstance(data, dict) else {}
            raise LoginRefused("the identity provider refused the authorization code: "
                               f"{err.get('error_description') or err.get('error') or status}",
                               400)
        if not isinstance(data.get("id_token"), str):
            raise LoginRefused("the identity provider sent no ID token (is 'openid' among "
                               "ATRIUM_OIDC_SCOPES?)", 502)
        return data

    async def validate(self, id_token: str, *, nonce: str | None,
                       access_token: str | None) -> dict[str, Any]:
        """Validate an ID token (refetching the JWKS once for an unknown key id)."""
        meta = await self.metadata()
        kwargs: dict[str, Any] = dict(issuer=meta.issuer, client_id=self.client_id,
                                      nonce=nonce, access_token=access_token,
                                      algorithms=meta.algorithms)
        try:
            return validate_id_token(id_token, await self.jwks(), **kwargs)
        except UnknownSigningKey:
            return validate_id_token(id_token, await self.jwks(force=True), **kwargs)

    async def validate_logout(self, logout_token: str) -> dict[str, Any]:
        """Validate a back-channel logout token (refetching the JWKS once if needed)."""
        meta = await self.metadata()
        kwargs: dict[str, Any] = dict(issuer=meta.issuer, client_id=self.client_id,
                                      algorithms=meta.algorithms)
        try:
            return validate_logout_token(logout_token, await self.jwks(), **kwargs)
        except UnknownSigningKey:
            return validate_logout_token(logout_token, await self.jwks(force=True), **kwargs)

    async def userinfo(self, access_token: str, subject: str) -> dict[str, Any]:
        """The userinfo claims (empty when the provider has no endpoint)."""
        meta = await self.metadata()
        if not meta.userinfo_endpoint or not access_token:
            return {}
        status, data = await self._fetch(meta.userinfo_endpoint, bearer=access_token)
        if status != 200 or not isinstance(data, dict):
            raise ProviderUnreachable(f"the provider's userinfo endpoint answered {status}")
        if data.get("sub") != subject:
            # OIDC Core 5.3.2: a userinfo answer for another subject must not be used.
            raise LoginRefused("the provider's userinfo is about another user than the ID "
                               "token")
        return data

    async def refresh(self, refresh_token: str, subject: str) -> dict[str, Any]:
        """Use the refresh token: the provider session still lives if this succeeds.

        Raises :class:`SessionEnded` when the provider refuses the token (invalid_grant),
        :class:`ProviderUnreachable` when it cannot say.
        """
        meta = await self.metadata()
        status, data = await self._fetch(meta.token_endpoint, client_auth=True, form={
            "grant_type": "refresh_token", "refresh_token": refresh_token})
        err = data.get("error") if isinstance(data, dict) else None
        if status in (400, 401) and err in ("invalid_grant", "invalid_token"):
            raise SessionEnded(str(data.get("error_description") or err))
        if status != 200 or not isinstance(data, dict):
            raise ProviderUnreachable(f"the provider's token endpoint answered {status} "
                                      f"({err})")
        if isinstance(data.get("id_token"), str):
            claims = await self.validate(data["id_token"], nonce=None,
                                         access_token=data.get("access_token"))
            if claims.get("sub") != subject:
                raise SessionEnded("the refreshed ID token is about another user")
        return data

    async def logout_url(self, id_token: str) -> str | None:
        """Where to send the browser to end the provider session (None: no such endpoint)."""
        try:
            meta = await self.metadata()
        except ProviderUnreachable as err:
            log.warning("cannot end the provider session: %s", err.message)
            return None
        if not meta.end_session_endpoint:
            return None
        return end_session_url(meta.end_session_endpoint, id_token_hint=id_token,
                               client_id=self.client_id,
                               post_logout_redirect_uri=self.post_logout_redirect_uri)


def _form(value: str) -> str:
    return quote_plus(value)

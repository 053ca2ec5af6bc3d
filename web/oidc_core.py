"""OpenID Connect, the pure part: PKCE, ID token validation, claims -> Atrium identity.

No I/O here (web/oidc_client.py talks to the provider), so every refusal can be tested
with tokens made on the spot. Refusals raise :class:`LoginRefused` whose message is meant
for the person logging in: it says what was wrong, not a library's error code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from orchestrator.models import Role

# Asymmetric algorithms only: an HS256 token would be "signed" with the client secret,
# which is a shared value, and "none" is no signature at all.
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                      "ES256", "ES384", "ES512", "EdDSA")
LEEWAY = 60  # seconds of clock skew tolerated between Atrium and the provider
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class LoginRefused(Exception):
    """A login answer was refused; ``message`` is shown to the user, ``status`` answered."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class UnknownSigningKey(LoginRefused):
    """The token names a key the JWKS lacks: the caller refetches the JWKS once."""


def authorization_url(endpoint: str, *, client_id: str, redirect_uri: str,
                      scopes: Sequence[str], state: str, nonce: str,
                      code_verifier: str) -> str:
    """The authorization-code request with PKCE (S256), state and nonce."""
    return add_params_to_uri(endpoint, [
        ("response_type", "code"), ("client_id", client_id), ("redirect_uri", redirect_uri),
        ("scope", " ".join(scopes)), ("state", state), ("nonce", nonce),
        ("code_challenge", create_s256_code_challenge(code_verifier)),
        ("code_challenge_method", "S256"),
    ])


def end_session_url(endpoint: str, *, id_token_hint: str, client_id: str,
                    post_logout_redirect_uri: str) -> str:
    """RP-initiated logout: ends the provider session, then comes back to Atrium."""
    params = [("client_id", client_id), ("post_logout_redirect_uri", post_logout_redirect_uri)]
    if id_token_hint:
        params.insert(0, ("id_token_hint", id_token_hint))
    return add_params_to_uri(endpoint, params)


_CLAIM_WORDS = {
    "iss": "it was issued by another provider (issuer {got!r}, expected {want!r})",
    "aud": "it was issued for another application (audience {got!r}, expected {want!r})",
    "azp": "it was issued for another application (authorized party {got!r})",
    "nonce": "its nonce does not match this login (a replayed or substituted token)",
    "iat": "its issue time is in the future",
    "nbf": "it is not valid yet",
    "at_hash": "it does not belong to the access token it came with",
    "sub": "it has no subject",
}


def validate_id_token(raw: str, jwks: Mapping[str, Any], *, issuer: str, client_id: str,
                      nonce: str | None, access_token: str | None = None,
                      algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
                      now: float | None = None, leeway: int = LEEWAY,
                      what: str = "ID token", subject_required: bool = True
                      ) -> dict[str, Any]:
    """The claims of ``raw`` if it is a valid ID token for this login; else LoginRefused.

    Checks the signature against the provider's ``jwks`` (asymmetric algorithms only),
    then issuer, audience (and azp), expiry, issue time, nonce (when given: at login; a
    refreshed ID token carries none) and at_hash (when both are present). ``what`` names
    the token in messages.
    """
    algs = [a for a in algorithms if a in ALLOWED_ALGORITHMS]
    try:
        keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as err:
        raise LoginRefused(f"the provider's signing keys (JWKS) are unusable: {err}",
                           502) from None
    try:
        token = jwt.decode(raw, keys, algorithms=algs,
                           registry=JWSRegistry(algorithms=algs, strict_check_header=False))
    except InvalidKeyIdError:
        raise UnknownSigningKey(f"the {what} is signed with a key the provider does not "
                                "publish") from None
    except BadSignatureError:
        raise LoginRefused(f"the {what}'s signature does not verify with the provider's "
                           "keys (a forged or altered token)") from None
    except UnsupportedAlgorithmError:
        raise LoginRefused(f"the {what} is unsigned or uses a signature algorithm Atrium "
                           f"does not accept (accepted: {', '.join(algs)})") from None
    except (JoseError, ValueError, TypeError) as err:
        raise LoginRefused(f"the {what} is malformed ({err})") from None
    claims = token.claims
    options: dict[str, Any] = {"iss": {"essential": True, "value": issuer},
                               "aud": {"essential": True, "value": client_id},
                               "sub": {"essential": subject_required},
                               "exp": {"essential": True}}
    params: dict[str, Any] = {"client_id": client_id}
    if nonce is not None:
        params["nonce"] = nonce
    if access_token:
        params["access_token"] = access_token
    checker = (CodeIDToken if subject_required else _LogoutClaims)(claims, token.header,
                                                                   options, params)
    try:
        checker.validate(now=int(now if now is not None else time.time()), leeway=leeway)
    except ExpiredTokenError:
        raise LoginRefused(f"the {what} has expired (a stale or replayed token; check the "
                           "clocks if this persists)") from None
    except MissingClaimError as err:
        raise LoginRefused(f"the {what} lacks the {err.claim!r} claim") from None
    except ClaimError as err:
        template = _CLAIM_WORDS.get(err.claim, "its {claim!r} claim is invalid")
        want = issuer if err.claim == "iss" else client_id
        raise LoginRefused(f"the {what} was refused: " + template.format(
            got=claims.get(err.claim), want=want, claim=err.claim)) from None
    except JoseError as err:
        raise LoginRefused(f"the {what} was refused: {err.description}") from None
    return dict(claims)


class _LogoutClaims(CodeIDToken):
    ESSENTIAL_CLAIMS = ["iss", "aud", "exp", "iat"]  # a sid may stand for the sub


BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_MAX_AGE = 600  # seconds: older logout tokens are refused (replay window)


def validate_logout_token(raw: str, jwks: Mapping[str, Any], *, issuer: str, client_id: str,
                          algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
                          now: float | None = None) -> dict[str, Any]:
    """The claims of a back-channel logout token (OIDC Back-Channel Logout 1.0, 2.4/2.6).

    Signature, issuer, audience and expiry as for an ID token; besides: issued within the
    last :data:`LOGOUT_TOKEN_MAX_AGE` seconds, the back-channel logout event present, a
    ``sid`` or a ``sub``, and no ``nonce`` (so that an ID token cannot pass for one).
    """
    claims = validate_id_token(raw, jwks, issuer=issuer, client_id=client_id, nonce=None,
                               algorithms=algorithms, now=now, what="logout token",
                               subject_required=False)
    moment = now if now is not None else time.time()
    iat = claims.get("iat")
    if not isinstance(iat, (int, float)) or iat < moment - LOGOUT_TOKEN_MAX_AGE:
        raise LoginRefused("the logout token is too old", 400)
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
        raise LoginRefused("the logout token lacks the back-channel logout event", 400)
    if "nonce" in claims:
        raise LoginRefused("a logout token must not carry a nonce", 400)
    if not claims.get("sid") and not claims.get("sub"):
        raise LoginRefused("the logout token names neither a session nor a subject", 400)
    return claims


def claim(claims: Mapping[str, Any], path: str) -> Any:
    """``claims[path]``, where dots descend into objects (``realm_access.roles``)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class Identity:
    """Who the provider says logged in, mapped to Atrium's terms."""

    subject: str
    username: str
    email: str
    name: str
    groups: list[str]
    roles: set[Role]


@dataclass(frozen=True)
class ClaimMapping:
    """Which claims give username, email, name and groups; which groups give roles."""

    username: str = "preferred_username"
    email: str = "email"
    name: str = "name"
    groups: str = "groups"
    role_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def managed_roles(self) -> set[Role]:
        """The roles the provider decides (the others are left to admins)."""
        return {Role(r) for r in self.role_groups}

    def roles_for(self, groups: Sequence[str]) -> set[Role]:
        # Keycloak writes group paths ("/staff"): compare without the slashes.
        have = {g.strip("/") for g in groups}
        return {Role(role) for role, names in self.role_groups.items()
                if have & {n.strip("/") for n in names}}

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """Map the (ID token + userinfo) claims; refuse what cannot make a user."""
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise LoginRefused("the provider sent no subject ('sub') for this user")
        username = claim(claims, self.username)
        if not isinstance(username, str) or not username:
            raise LoginRefused(f"the provider sent no {self.username!r} claim, which gives "
                               "the Atrium username (see ATRIUM_OIDC_USERNAME_CLAIM and "
                               "ATRIUM_OIDC_SCOPES)")
        if not USERNAME.match(username):
            raise LoginRefused(f"the username {username!r} from the provider is not usable "
                               "(letters, digits, '.', '_', '@', '-'; at most 64)")
        email = claim(claims, self.email)
        name = claim(claims, self.name)
        raw_groups = claim(claims, self.groups)
        if isinstance(raw_groups, str):
            groups = [g for g in re.split(r"[,\s]+", raw_groups) if g]
        elif isinstance(raw_groups, list):
            groups = [g for g in raw_groups if isinstance(g, str) and g]
        else:
            groups = []
        return Identity(subject=subject, username=username,
                        email=email if isinstance(email, str) else "",
                        name=name if isinstance(name, str) else "",
                        groups=groups, roles=self.roles_for(groups))

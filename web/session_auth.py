"""Who is calling, on the portal's host and on an instance's own host.

:func:`request_principal` is the one entry: every handler resolves its caller through it.
On the portal's host that is the login cookie or a bearer token (``web/auth.py``). On an
instance's host it is :func:`session_host_principal`: a bearer token, or the host's own
cookie (``atrium_instance``), which names the login session it was issued to and is
valid only while that login lives - logout and revocation end it too. The portal's
session cookie is never read there (browsers never send it: it is host-only).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import tornado.escape
from tornado.web import RequestHandler, decode_signed_value

from orchestrator.tokens import hash_token
from sharing.policy import Principal
from web.auth import bearer_token
from web.credentials import Credential

STATE_MAX_AGE = 600  # seconds a browser may take from the session host to the portal and back


def _portal(handler: RequestHandler) -> Any:
    return handler.application.settings["portal"]


def cookie_names(secure: bool) -> tuple[str, str]:
    """(instance cookie, state cookie): ``__Host-`` over https, so that no other host -
    another instance's code included - can plant or shadow them."""
    prefix = "__Host-" if secure else ""
    return f"{prefix}atrium_instance", f"{prefix}atrium_state"


# Every name the proxy must strip before a request reaches a session.
ATRIUM_COOKIES = frozenset({"atrium_session", "_xsrf", *cookie_names(False),
                            *cookie_names(True)})


@dataclass(frozen=True)
class HostGrant:
    """What an instance host's cookie says: this user, through this login session."""

    uid: str
    user_id: int
    login_digest: str

    def encode(self) -> str:
        return f"{self.uid}|{self.user_id}|{self.login_digest}"

    @classmethod
    def decode(cls, raw: bytes | None) -> HostGrant | None:
        try:
            uid, user_id, login = (raw or b"").decode("ascii").split("|")
            return cls(uid, int(user_id), login)
        except ValueError:
            return None


def secure_cookies(handler: RequestHandler) -> bool:
    return bool(_portal(handler).settings.secure_cookies or handler.request.protocol == "https")


async def request_principal(handler: RequestHandler) -> Principal | None:
    """THE caller of any request (see the module's docstring)."""
    portal = _portal(handler)
    uid = portal.origins.session_uid(handler.request.host_name)
    if uid is None:
        principal: Principal | None = await portal.auth.principal(handler)
        return principal
    return await session_host_principal(handler, uid)


async def session_host_principal(handler: RequestHandler, uid: str) -> Principal | None:
    """The caller on instance ``uid``'s own host: a bearer token, or this host's cookie
    while the login session it names lives (expiry, idle timeout, logout, revocation and
    the provider's checks all apply, as ``Authenticator.session_user`` decides)."""
    portal = _portal(handler)
    token = bearer_token(handler)
    user_id: int | None = None
    if token is not None:
        user_id = await portal.auth.tokens.get(hash_token(token))
    else:
        grant = read_grant(handler, uid)
        if grant is not None and await portal.auth.session_user(grant.login_digest) \
                == grant.user_id:
            user_id = grant.user_id
            # Open connections keep the login session this cookie is bound to, so logout
            # and revoking that session close them (web/credentials.py).
            handler.credential = Credential(  # type: ignore[attr-defined]
                user_id, session=grant.login_digest)
    if user_id is None:
        return None
    principal: Principal | None = await portal.principals.get(user_id)
    return principal


def read_grant(handler: RequestHandler, uid: str) -> HostGrant | None:
    """This host's grant. Every cookie of that name is tried: over http, code on another
    instance's host can add one for the whole sessions domain, which must not shadow
    this host's own (over https the ``__Host-`` prefix rules that out)."""
    portal = _portal(handler)
    name = cookie_names(secure_cookies(handler))[0]
    for header in handler.request.headers.get_list("Cookie"):
        for item in header.split(";"):
            key, _, value = item.strip().partition("=")
            if key != name:
                continue
            grant = HostGrant.decode(decode_signed_value(
                handler.application.settings["cookie_secret"], name, value.strip('"'),
                max_age_days=portal.settings.session_lifetime / 86400 + 1))
            if grant is not None and grant.uid == uid:
                return grant
    return None


def set_grant(handler: RequestHandler, grant: HostGrant) -> None:
    """Host-only (no Domain), HttpOnly, signed under its own name (so no other Atrium
    cookie's value passes for it)."""
    secure = secure_cookies(handler)
    instance, state = cookie_names(secure)
    handler.set_signed_cookie(
        instance, grant.encode(), httponly=True, samesite="Lax", secure=secure, path="/",
        expires_days=_portal(handler).settings.session_lifetime / 86400)
    handler.clear_cookie(state, path="/", secure=secure, samesite="Lax")


def read_state(handler: RequestHandler, uid: str) -> str | None:
    """The state this host gave the browser when it sent it to the portal."""
    raw = handler.get_signed_cookie(cookie_names(secure_cookies(handler))[1],
                                    max_age_days=STATE_MAX_AGE / 86400)
    found_uid, _, state = (raw or b"").decode("ascii", "replace").partition("|")
    return state if raw and found_uid == uid and state else None


def entry_url(handler: RequestHandler) -> str:
    """Where an unauthenticated browser request goes: the login page on the portal's
    host; on an instance's host, the portal's ticket office, after this host remembers a
    fresh state in a cookie of its own."""
    portal = _portal(handler)
    uri = handler.request.uri or "/"
    uid = portal.origins.session_uid(handler.request.host_name)
    if uid is None:
        return f"/login?next={tornado.escape.url_escape(uri)}"
    state = secrets.token_urlsafe(24)
    secure = secure_cookies(handler)
    handler.set_signed_cookie(cookie_names(secure)[1], f"{uid}|{state}", httponly=True,
                              samesite="Lax", secure=secure, path="/",
                              expires_days=STATE_MAX_AGE / 86400)
    query = tornado.escape.url_escape
    return (f"{portal.origins.portal_url}/instances/{uid}/enter?state={query(state)}"
            f"&next={query(uri)}")

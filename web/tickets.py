"""The ticket office: how a logged-in browser reaches an instance's own origin.

1. A browser without this host's cookie asks ``<uid host>/instances/<uid>/lab/...``: the
   host keeps a fresh *state* in a cookie of its own and sends the browser to the portal's
   ``/instances/<uid>/enter?state=...&next=...`` (:func:`web.session_auth.entry_url`).
2. The portal (login required) checks that the person may use the instance now, stores a
   one-time ticket bound to (instance, user, login session, state) and sends the browser
   to ``<uid host>/instances/<uid>/ticket?ticket=...``.
3. The host redeems the ticket once (:mod:`orchestrator.session_tickets`), checks the
   state cookie and that the login still lives, sets its own cookie and goes on to
   ``next``. Authorization per request stays with the proxy (``sharing.policy``).

On the portal's host, browser requests for an instance's lab or desktop are sent to the
instance's host (:class:`ToSessionHost`); scripts holding an API token (and no login
cookie) are still served there (:class:`ScriptOnly`), with responses sandboxed.
"""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher

from orchestrator import session_tickets
from orchestrator.errors import RequestError
from sharing.policy import Action, authorize
from web.auth import SESSION_COOKIE
from web.base import ApiHandler, BaseHandler
from web.desktop import KeyboardHandler
from web.origins import Origins
from web.pages import safe_next
from web.session_auth import HostGrant, read_state, set_grant

STATE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class EnterHandler(BaseHandler):
    """``GET /instances/<uid>/enter?state=&next=`` on the portal: issue a ticket."""

    @tornado.web.authenticated
    async def get(self, uid: str) -> None:
        state = self.get_argument("state", "")
        if not 16 <= len(state) <= 64 or not set(state) <= STATE_CHARS:
            raise RequestError("a ticket needs the state the instance's host gave", 400)
        login = self.portal.auth.session_digest(self)
        if login is None:
            raise RequestError("tickets are issued to browser logins only (API tokens work "
                               "on the instance's host directly)", 400)
        prefix = f"/instances/{uid}/"
        next_url = safe_next(self.get_argument("next", ""))
        if not next_url.startswith(prefix) or next_url.startswith(f"{prefix}ticket"):
            next_url = f"{prefix}lab/"
        route = await self.portal.routes.get(uid)
        if route is None:
            raise RequestError("no such instance", 404)
        action = Action.DESKTOP_WATCH if next_url.startswith(f"{prefix}desktop") \
            else Action.OPEN_LAB
        decision = authorize(self.principal, route.access, action,
                             self.portal.presence.connected(uid, route.access.owner_id))
        if not decision:
            raise RequestError(decision.reason, decision.status)
        assert self.principal is not None
        async with self.portal.db.session() as s:
            ticket = await session_tickets.issue(
                s, uid=uid, user_id=self.principal.user_id, login_digest=login, state=state,
                next_url=next_url)
            await s.commit()
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")
        self.redirect(f"{self.portal.origins.session_origin(uid)}{prefix}ticket?ticket="
                      f"{tornado.escape.url_escape(ticket)}")


class SessionHostHandler(BaseHandler):
    """Pages of an instance's host answer errors as JSON: the portal's page layout
    (links to the dashboard, admin) does not belong there."""

    def error_response(self, status: int, message: str) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"error": {"status": status, "message": message}})


class TicketHandler(SessionHostHandler):
    """``GET /instances/<uid>/ticket?ticket=`` on the instance's host: redeem it."""

    async def prepare(self) -> None:
        pass  # nobody is logged in here yet

    async def get(self, uid: str) -> None:
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")
        ticket = self.get_argument("ticket", "")
        state = read_state(self, uid)
        if not ticket or len(ticket) > 128:
            raise RequestError("no ticket", 400)
        async with self.portal.db.session() as s:
            grant = await session_tickets.redeem(s, ticket, uid=uid, state=state or "")
            await s.commit()
        if grant is None or state is None:
            raise RequestError("this ticket is not valid here (used, expired, for another "
                               "instance or another browser): open the instance again", 403)
        if await self.portal.auth.session_user(grant.login_digest) != grant.user_id:
            raise RequestError("your login has ended: log in again", 403)
        set_grant(self, HostGrant(uid, grant.user_id, grant.login_digest))
        self.redirect(grant.next_url)


class SessionKeyboard(KeyboardHandler, SessionHostHandler):
    """The desktop page's keyboard switch, on the instance's host (same handler as the
    API's; cross-origin calls are refused by Tornado's cross-origin protection, and the
    host's cookie is SameSite)."""

    def check_xsrf_cookie(self) -> None:
        pass


class SessionNotFound(SessionHostHandler):
    async def prepare(self) -> None:
        raise RequestError("nothing here: this host serves one instance's lab and desktop",
                           404)


class UnknownHost(ApiHandler):
    """Any request for a name that is neither the portal's nor an instance's host."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def check_xsrf_cookie(self) -> None:
        pass

    def check_trusted_origin(self, origin: str) -> bool:
        return True  # refused in prepare() below, with the reason

    async def prepare(self) -> None:
        raise RequestError(f"unknown host {self.request.host_name!r}: this server answers "
                           "to its own names only", 421)


class ScriptOnly(Matcher):
    """Wraps a matcher: matches only requests with a bearer token and no login cookie.

    No browser sends such a request on its own: navigations, subresources and WebSocket
    handshakes carry no Authorization header, and a cross-origin script needs a CORS
    preflight the portal never grants. So what a session answers to such requests is
    never run by a browser as the portal's origin (and is sandboxed besides)."""

    def __init__(self, inner: Matcher) -> None:
        self.inner = inner

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if SESSION_COOKIE in request.cookies:
            return None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or not value.strip():
            return None
        return self.inner.match(request)


class ToSessionHost(BaseHandler):
    """A browser asked the portal for an instance's lab or desktop: send it to the
    instance's own host (which starts the ticket flow if needed)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def check_xsrf_cookie(self) -> None:
        pass  # refused below anyway

    async def prepare(self) -> None:
        uid = self.path_args[0]
        origins: Origins = self.portal.origins
        if self.request.method in ("GET", "HEAD") and not self.request.headers.get("Upgrade"):
            self.redirect(origins.session_origin(uid) + (self.request.uri or "/"))
            return
        await super().prepare()
        if self.principal is None:
            raise RequestError("authentication required: send an API token", 401)
        raise RequestError(f"this instance is served at {origins.session_origin(uid)} (or "
                           "here to scripts sending an API token and no login cookie)", 403)

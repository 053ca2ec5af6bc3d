"""The authenticating reverse proxy in front of each instance's JupyterLab.

Every request is authorised with the sharing policy from in-memory snapshots (no database
query per request), the caller's Atrium cookie is removed, and the instance's own token is
added server-side, so it never reaches the browser. Bodies stream both ways; nothing is
buffered whole. WebSockets (kernels, terminals) are relayed frame by frame.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import tornado.escape
import tornado.web
import tornado.websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.routing import Matcher, PathMatches

from orchestrator import metrics
from sharing.policy import Action, authorize
from web import activity, bodylimit
from web.base import BaseHandler
from web.credentials import credential_of
from web.headers import PAGE_HEADERS, SANDBOXED, passes
from web.limits import INSTANCE_BUSY, TOO_MANY_USER_CONNECTIONS, Lease, Ticket
from web.routes import Route
from web.session_auth import ATRIUM_COOKIES, entry_url, request_principal

log = logging.getLogger("atrium.proxy")

HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Proxy-Connection"))
REQUEST_DROP = HOP_BY_HOP | {"host", "authorization", "cookie", "content-length",
                             "x-xsrftoken", "x-csrftoken"}
WS_DROP = REQUEST_DROP | {"sec-websocket-key", "sec-websocket-version",
                          "sec-websocket-extensions", "sec-websocket-protocol", "origin"}
BODY_QUEUE = 8  # chunks in flight from the client before the upload is paused


class IsWebSocket(Matcher):
    """Matches WebSocket upgrade requests on a path pattern."""

    def __init__(self, pattern: str) -> None:
        self.path = PathMatches(pattern)

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return self.path.match(request)


def _without_session_cookie(header: str) -> str:
    """The Cookie header minus Atrium's own cookies (the session must never see them)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:
        return ""
    return "; ".join(f"{k}={m.coded_value}" for k, m in jar.items()
                     if k not in ATRIUM_COOKIES)


def upstream_headers(incoming: HTTPHeaders, token: str, drop: frozenset[str]) -> HTTPHeaders:
    out = HTTPHeaders()
    for name, value in incoming.get_all():
        if name.lower() not in drop:
            out.add(name, value)
    cookie = _without_session_cookie(incoming.get("Cookie", ""))
    if cookie:
        out["Cookie"] = cookie
    out["Authorization"] = f"token {token}"
    return out


def cross_origin_error(handler: tornado.websocket.WebSocketHandler) -> str | None:
    """Tornado's own cross-origin verdict for a WebSocket, taken before the upgrade so that
    nothing is opened upstream for a refused request."""
    return handler._check_cross_origin(handler.check_origin)


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    redirect: str = ""

    def answer(self, handler: tornado.web.RequestHandler) -> None:
        if self.redirect:
            handler.redirect(self.redirect)
            return
        handler.set_status(self.status)
        handler.finish({"error": {"status": self.status, "message": self.message}})


class ProxyAuth:
    """What the HTTP and WebSocket proxy handlers share: find and authorise the route."""

    action = Action.OPEN_LAB

    async def authorise(self: Any, uid: str, protocol: str = "jupyter") -> Route | Refusal:
        handler: BaseHandler = self
        route = await handler.portal.routes.get(uid)
        if route is None:
            return Refusal(404, "no such instance")
        presence = handler.portal.presence
        decision = authorize(handler.principal, route.access, self.action,
                             await presence.present(uid, route.access.owner_id))
        if not decision:
            request = handler.request
            if decision.status == 401 and request.method == "GET" and not (
                    request.headers.get("Upgrade")):
                return Refusal(401, decision.reason, entry_url(handler))
            return Refusal(decision.status, decision.reason)
        if protocol not in route.endpoints:
            service = "JupyterLab" if protocol == "jupyter" else "the desktop"
            return Refusal(503, f"the instance is {route.status.value.lower()}, "
                                f"{service} is not available")
        assert handler.principal is not None
        presence.seen(uid, handler.principal.user_id)
        return route

    _lease: Lease | None = None

    def admit(self: Any) -> Refusal | None:
        """Count this connection against its user's cap (until :meth:`release`)."""
        users = self.portal.bounds.users
        self._lease = users.acquire(self.principal.user_id)
        if self._lease is None:
            return Refusal(429, TOO_MANY_USER_CONNECTIONS.format(cap=users.cap))
        return None

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()


@tornado.web.stream_request_body
class LabProxyHandler(ProxyAuth, BaseHandler):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    _body: asyncio.Queue[bytes | None] | None = None
    _upstream: asyncio.Task[None] | None = None
    _headers_sent = False
    _refusal: Refusal | None = None
    _ticket: Ticket | None = None

    def check_xsrf_cookie(self) -> None:
        # Cross-site requests cannot carry the session cookie (SameSite=Lax) and are
        # refused by the origin check in prepare(); JupyterLab's own XSRF is off behind us.
        pass

    async def prepare(self) -> None:
        # Refusals are answered from the method, after the request was read: finishing in
        # prepare() would drop the keep-alive connection under the client's next request.
        await super().prepare()
        origin = self.request.headers.get("Origin")
        if origin and self.request.method not in ("GET", "HEAD", "OPTIONS") and (
                urlsplit(origin).netloc != self.request.host):
            self._refusal = Refusal(403, "cross-origin request refused")
            return
        route = await self.authorise(self.path_args[0])
        if isinstance(route, Refusal):
            self._refusal = route
            return
        self._refusal = self.admit()
        if self._refusal is not None:
            return
        self._ticket = self.portal.bounds.instances.enter(self.path_args[0])
        if self._ticket is None:
            self._refusal = Refusal(503, INSTANCE_BUSY)
            return
        bodylimit.lift(self.request, self.portal.settings.limits)  # authorised: may stream
        if activity.is_use(self.request.method, self.request.headers):
            activity.note(self.portal.activity, self.path_args[0])
        # An in-flight request is an open connection too: revocation aborts it.
        self.portal.presence.opened(self.path_args[0], self, credential_of(
            self.portal.auth, self, self.principal), "http")
        has_body = ("Content-Length" in self.request.headers and
                    self.request.headers["Content-Length"] != "0") or (
                    "Transfer-Encoding" in self.request.headers)
        if has_body:
            self._body = asyncio.Queue(BODY_QUEUE)
        self._upstream = asyncio.get_running_loop().create_task(self._forward(route))

    def data_received(self, chunk: bytes) -> Any:
        metrics.PROXY_BYTES.labels("up").inc(len(chunk))
        if self._body is not None:
            return self._body.put(chunk)  # a full queue pauses reading from the client
        return None

    async def _produce(self, write: Any) -> None:  # body_producer
        assert self._body is not None
        while (chunk := await self._body.get()) is not None:
            await write(chunk)

    def _on_header_line(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            self._status_line = (int(parts[1]), parts[2] if len(parts) > 2 else None)
            self._response_headers = HTTPHeaders()
        elif line:
            self._response_headers.parse_line(line)
        elif getattr(self, "_status_line", (100,))[0] != 100:
            code, reason = self._status_line
            self.set_status(code, reason)
            self._clear_headers_for_proxy()
            for name, value in self._response_headers.get_all():
                if passes(name):
                    self.add_header(name, value)
            if self.portal.origins.subdomains and self.portal.origins.session_uid(
                    self.request.host_name) is None:
                for name, value in SANDBOXED.items():  # a script's request (see tickets.py)
                    self.set_header(name, value)
            if "Content-Length" in self._response_headers and self.request.method != "HEAD":
                self.set_header("Content-Length", self._response_headers["Content-Length"])
            self._headers_sent = True

    def _clear_headers_for_proxy(self) -> None:
        for name in ("Content-Type", "Server", "Date", *PAGE_HEADERS):
            self.clear_header(name)

    def _on_chunk(self, chunk: bytes) -> Any:
        metrics.PROXY_BYTES.labels("down").inc(len(chunk))
        self.write(chunk)
        # Returning the flush makes the client wait for a slow reader (backpressure), so
        # a download is never buffered whole in the portal.
        return self.flush()

    async def _forward(self, route: Route) -> None:
        request = self.request
        url = route.endpoints["jupyter"].rstrip("/") + request.uri
        headers = upstream_headers(request.headers, route.secrets.get("jupyter_token", ""),
                                   REQUEST_DROP)
        headers["X-Forwarded-For"] = request.remote_ip or ""
        headers["X-Forwarded-Proto"] = request.protocol
        headers["X-Forwarded-Host"] = request.host
        if "Content-Length" in request.headers:
            headers["Content-Length"] = request.headers["Content-Length"]
        upstream = HTTPRequest(
            url, method=request.method or "GET", headers=headers,
            body_producer=self._produce if self._body is not None else None,  # type: ignore[arg-type]
            follow_redirects=False, decompress_response=False, allow_nonstandard_methods=True,
            header_callback=self._on_header_line, streaming_callback=self._on_chunk,
            connect_timeout=10, request_timeout=3600)
        assert self._ticket is not None
        metrics.PROXY_REQUESTS.inc()
        try:
            async with self._ticket:  # waits while the instance's slots are all taken
                await AsyncHTTPClient().fetch(upstream, raise_error=False)
        except (TimeoutError, OSError, HTTPClientError) as err:
            metrics.UPSTREAM_ERRORS.labels("http").inc()
            if not self._headers_sent:
                self.set_status(502)
                self.finish({"error": {"status": 502,
                                       "message": f"the instance is not answering ({err})"}})
            return

    async def _relay(self, *args: str) -> None:
        if self._refusal is not None:
            self._refusal.answer(self)
            return
        if self._body is not None:
            await self._body.put(None)
        if self._upstream is not None:
            await self._upstream
        if not self._finished:
            try:
                self.finish()
            except Exception:  # the upstream broke off mid-body: close the connection
                if self.request.connection is not None:
                    self.request.connection.close()  # type: ignore[attr-defined]

    get = head = post = put = patch = delete = options = _relay

    def on_connection_close(self) -> None:
        if self._upstream is not None and not self._upstream.done():
            self._upstream.cancel()
        self.on_finish()

    def on_finish(self) -> None:
        self.release()
        if self._ticket is not None:
            self._ticket.close()
        if self.path_args:
            self.portal.presence.closed(self.path_args[0], self)

    def revalidate(self, route: Route | None, owner_present: bool) -> None:
        """Abort the request (both ways) when the policy no longer allows it."""
        if route is None or not authorize(self.principal, route.access, Action.OPEN_LAB,
                                          owner_present):
            if self.request.connection is not None:
                self.request.connection.close()  # type: ignore[attr-defined]


class LabWebSocketProxy(ProxyAuth, tornado.websocket.WebSocketHandler):
    """Relays a WebSocket between the browser and the instance's JupyterLab."""

    upstream: tornado.websocket.WebSocketClientConnection | None = None
    _pump: asyncio.Task[None] | None = None

    @property
    def portal(self) -> Any:
        return self.application.settings["portal"]

    async def get(self, uid: str, path: str) -> None:
        self.principal = await request_principal(self)
        error = cross_origin_error(self)
        if error is not None:
            Refusal(403, f"cross-origin WebSocket refused: {error}").answer(self)
            return
        route = await self.authorise(uid)
        refusal = route if isinstance(route, Refusal) else self.admit()
        if refusal is not None:
            refusal.answer(self)
            return
        assert isinstance(route, Route)
        target = route.endpoints["jupyter"].replace("http", "ws", 1).rstrip("/") + self.request.uri
        headers = upstream_headers(self.request.headers, route.secrets.get("jupyter_token", ""),
                                   WS_DROP)
        protocols = [p.strip() for p in self.request.headers.get(
            "Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        try:
            self.upstream = await tornado.websocket.websocket_connect(
                HTTPRequest(target, headers=headers, connect_timeout=10),
                subprotocols=protocols or None, max_message_size=self.max_message_size)
        except (OSError, HTTPClientError, tornado.websocket.WebSocketError) as err:
            code = err.code if isinstance(err, HTTPClientError) else 502
            metrics.UPSTREAM_ERRORS.labels("websocket").inc()
            self.set_status(code if 400 <= code < 600 else 502)
            self.finish({"error": {"status": self.get_status(),
                                   "message": f"the instance refused the connection ({err})"}})
            return
        await super().get(uid, path)

    def get_current_user(self) -> Any:
        return getattr(self, "principal", None)

    @property
    def max_message_size(self) -> int:
        """Lab messages may be larger than the portal's own (ATRIUM_LAB_WS_MAX_MESSAGE)."""
        return int(self.portal.settings.limits.lab_ws_max_message)

    def on_finish(self) -> None:
        if self.get_status() != 101:  # refused; an accepted upgrade "finishes" too
            self.release()

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream else None

    def get_compression_options(self) -> None:
        return None  # relaying; compression costs latency

    def open(self, *args: str) -> None:
        self.uid = args[0]
        assert self.principal is not None  # authorised in get()
        self.user_id = self.principal.user_id
        self.portal.presence.opened(self.uid, self, credential_of(
            self.portal.auth, self, self.principal), "lab")
        metrics.WEBSOCKETS.labels("lab").inc()
        # Kernels answer with bursts of frames: with Nagle on, the later ones wait for the
        # peer's delayed ACK (~40 ms).
        self.set_nodelay(True)
        stream = getattr(self.upstream, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)
        self._pump = asyncio.get_running_loop().create_task(self._from_upstream())

    async def _from_upstream(self) -> None:
        assert self.upstream is not None
        while True:
            message = await self.upstream.read_message()
            if message is None:
                self.close(self.upstream.close_code, self.upstream.close_reason)
                return
            metrics.PROXY_BYTES.labels("down").inc(len(message))
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except tornado.websocket.WebSocketClosedError:
                return

    async def on_message(self, message: str | bytes) -> None:
        if self.upstream is None:
            return
        activity.note(self.portal.activity, self.uid)
        metrics.PROXY_BYTES.labels("up").inc(len(message))
        try:
            await self.upstream.write_message(message, binary=isinstance(message, bytes))
        except tornado.websocket.WebSocketClosedError:
            self.close()

    def on_close(self) -> None:
        self.release()
        if self.upstream is not None:
            self.upstream.close()
        if hasattr(self, "user_id"):
            self.portal.presence.closed(self.uid, self)
            metrics.WEBSOCKETS.labels("lab").dec()

    def revalidate(self, route: Route | None, owner_present: bool) -> None:
        decision = authorize(self.principal, route.access, Action.OPEN_LAB, owner_present) \
            if route is not None else None
        if not decision:
            self.close(4403, decision.reason if decision else "the instance is gone")

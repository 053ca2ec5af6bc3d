"""Remote desktops: the noVNC page and the WebSocket <-> VNC bridge.

The bridge authorises the connection with the sharing policy before any VNC byte is sent,
authenticates to the VNC server itself with the instance's password (the browser is
offered "no authentication", so the password never reaches it), and then relays the RFB
stream. Client messages are parsed: input marks the instance active, and for members who
may only watch, input never reaches the VNC server.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tornado.web
import tornado.websocket

from orchestrator import metrics
from orchestrator.errors import RequestError
from sharing.policy import Action, authorize
from spawners.base import BackendError
from web import rfb
from web.api import visible_instance
from web.base import ApiHandler, BaseHandler
from web.credentials import credential_of
from web.proxy import ProxyAuth, Refusal, cross_origin_error
from web.routes import Route
from web.session_auth import request_principal

log = logging.getLogger("atrium.desktop")

NOVNC_DIRS = (Path("/usr/share/novnc"),)


class VncHandshakeError(Exception):
    pass


async def vnc_connect(endpoint: str, password: str
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and authenticate to the VNC server; returns the stream after SecurityResult."""
    parts = urlsplit(endpoint)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port), 10)
    try:
        if not (await reader.readexactly(12)).startswith(b"RFB 003."):
            raise VncHandshakeError("not a VNC server")
        writer.write(rfb.VERSION)
        count = (await reader.readexactly(1))[0]
        if count == 0:
            size = struct.unpack(">I", await reader.readexactly(4))[0]
            raise VncHandshakeError((await reader.readexactly(size)).decode(errors="replace"))
        types = await reader.readexactly(count)
        if rfb.SEC_VNC_AUTH in types:
            writer.write(bytes([rfb.SEC_VNC_AUTH]))
            challenge = await reader.readexactly(16)
            writer.write(rfb.vnc_auth_response(password, challenge))
        elif rfb.SEC_NONE in types:
            writer.write(bytes([rfb.SEC_NONE]))
        else:
            raise VncHandshakeError(f"no supported security type in {list(types)}")
        if struct.unpack(">I", await reader.readexactly(4))[0] != 0:
            raise VncHandshakeError("the VNC server refused the instance's password")
        return reader, writer
    except BaseException:
        writer.close()
        raise


class DesktopBridge(ProxyAuth, tornado.websocket.WebSocketHandler):
    """``/instances/<uid>/desktop/websockify``: noVNC's WebSocket, bridged to the VNC server."""

    action = Action.DESKTOP_WATCH
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    can_input = False

    @property
    def portal(self) -> Any:
        return self.application.settings["portal"]

    def get_current_user(self) -> Any:
        return getattr(self, "principal", None)

    async def get(self, uid: str) -> None:
        self.principal = await request_principal(self)
        error = cross_origin_error(self)
        if error is not None:
            Refusal(403, f"cross-origin WebSocket refused: {error}").answer(self)
            return
        route = await self.authorise(uid, protocol="desktop")
        refusal = route if isinstance(route, Refusal) else self.admit()
        if refusal is not None:
            refusal.answer(self)
            return
        assert isinstance(route, Route)
        self.uid = uid
        self.user_id = self.principal.user_id if self.principal else 0
        present = await self.portal.presence.present(uid, route.access.owner_id)
        self.can_input = bool(authorize(self.principal, route.access, Action.DESKTOP_INPUT,
                                        present))
        try:
            self.reader, self.writer = await vnc_connect(
                route.endpoints["desktop"], route.secrets.get("vnc_password", ""))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, VncHandshakeError) as err:
            log.warning("desktop of %s: VNC connection failed: %r", uid, err)
            Refusal(502, f"the desktop is not answering ({err})").answer(self)
            return
        self._phase = "version"
        self._pending = bytearray()
        self._stream = rfb.ClientStream(self.portal.settings.limits.clipboard_max)
        await super().get(uid)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return "binary" if "binary" in subprotocols else None

    def get_compression_options(self) -> None:
        return None

    def open(self, *args: str) -> None:
        self.portal.presence.opened(self.uid, self, credential_of(
            self.portal.auth, self, self.principal), "desktop")
        metrics.WEBSOCKETS.labels("desktop").inc()
        self.set_nodelay(True)  # framebuffer updates come in bursts (see web/proxy.py)
        # Our side of the handshake with the browser: same version, no authentication.
        self.write_message(rfb.VERSION, binary=True)

    def revalidate(self, route: Route | None, owner_present: bool) -> None:
        """Close when watching is no longer allowed; stop input when only watching is."""
        if route is None or not authorize(self.principal, route.access, Action.DESKTOP_WATCH,
                                          owner_present):
            self.close(4403, "access to this desktop was revoked")
            return
        self.can_input = bool(authorize(self.principal, route.access, Action.DESKTOP_INPUT,
                                        owner_present))

    async def on_message(self, message: str | bytes) -> None:
        data = message.encode() if isinstance(message, str) else message
        if self._phase != "relay":
            await self._handshake(data)
            return
        await self._relay(data)

    async def _handshake(self, data: bytes) -> None:
        self._pending += data
        if self._phase == "version" and len(self._pending) >= 12:
            del self._pending[:12]
            self._phase = "security"
            await self.write_message(bytes([1, rfb.SEC_NONE]), binary=True)
        if self._phase == "security" and len(self._pending) >= 1:
            del self._pending[:1]
            self._phase = "init"
            await self.write_message(struct.pack(">I", 0), binary=True)
        if self._phase == "init" and len(self._pending) >= 1:
            del self._pending[:1]
            assert self.writer is not None
            self.writer.write(b"\x01")  # always shared: members see the same desktop
            self._phase = "relay"
            self._pump = asyncio.get_running_loop().create_task(self._from_server())
            rest = bytes(self._pending)
            self._pending.clear()
            if rest:
                await self._relay(rest)

    async def _relay(self, data: bytes) -> None:
        assert self.writer is not None
        try:
            out, used = rfb.relay(self._stream, data, self.can_input)
        except rfb.ProtocolError as err:
            log.warning("closing desktop connection to %s: %s", self.uid, err)
            self.close(1003, str(err))
            return
        if used:
            self.portal.activity[self.uid] = time.time()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _from_server(self) -> None:
        assert self.reader is not None
        try:
            while data := await self.reader.read(256 * 1024):
                await self.write_message(data, binary=True)
        except (OSError, tornado.websocket.WebSocketClosedError):
            pass
        self.close(1000, "the desktop closed the connection")

    def on_finish(self) -> None:
        if self.get_status() != 101:  # refused; an accepted upgrade "finishes" too
            self.release()

    def on_close(self) -> None:
        self.release()
        if hasattr(self, "_stream"):
            self.portal.presence.closed(self.uid, self)
            metrics.WEBSOCKETS.labels("desktop").dec()
        if self.writer is not None:
            self.writer.close()
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.cancel()


class DesktopPage(BaseHandler):
    """The full-window noVNC client of one instance."""

    @tornado.web.authenticated
    async def get(self, uid: str) -> None:
        route = await self.portal.routes.get(uid)
        if route is None:
            raise tornado.web.HTTPError(404, "no such instance")
        present = await self.portal.presence.present(uid, route.access.owner_id)
        decision = authorize(self.principal, route.access, Action.DESKTOP_WATCH, present)
        if not decision:
            raise tornado.web.HTTPError(decision.status, decision.reason)
        can_input = bool(authorize(self.principal, route.access, Action.DESKTOP_INPUT, present))
        on_own_host = self.portal.origins.session_uid(self.request.host_name) == uid
        self.render_page("desktop.html", uid=uid, view_only=not can_input,
                         novnc=novnc_dir() is not None, layouts=KEYBOARD_LAYOUTS,
                         keyboard_url=f"/instances/{uid}/desktop/keyboard" if on_own_host
                         else f"/api/v1/instances/{uid}/keyboard",
                         back_url=f"{self.portal.origins.portal_url}/instances/{uid}")


def novnc_dir() -> Path | None:
    return next((d for d in NOVNC_DIRS if (d / "core" / "rfb.js").exists()), None)


KEYBOARD_LAYOUTS = {"us": "English (US)", "gb": "English (UK)", "de": "German",
                    "fr": "French", "ch": "Swiss", "es": "Spanish", "it": "Italian",
                    "se": "Swedish", "dk": "Danish", "no": "Norwegian", "nl": "Dutch",
                    "pl": "Polish", "cz": "Czech", "jp": "Japanese"}


class KeyboardHandler(ApiHandler):
    """``POST /api/v1/instances/<uid>/keyboard {"layout": "de"}``: the desktop's layout."""

    async def post(self, uid: str) -> None:
        who = self.require_user()
        layout = self.json_body().get("layout")
        if layout not in KEYBOARD_LAYOUTS:
            raise RequestError(f"unknown keyboard layout {layout!r}; one of "
                               + ", ".join(KEYBOARD_LAYOUTS), 400)
        async with self.portal.db.session() as s:
            instance = await visible_instance(s, who, uid, Action.DESKTOP_INPUT)
            backend = self.portal.reconciler.backends.get(instance.backend)
            if backend is None or "desktop" not in instance.ready_protocols:
                raise RequestError("the desktop is not running", 409)
            try:
                await backend.set_keyboard_layout(uid, instance.backend_state, layout)
            except BackendError as err:
                raise RequestError(str(err), 409) from err
        self.send({"layout": layout})

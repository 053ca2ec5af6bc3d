"""Just enough of the RFB (VNC) protocol for the desktop bridge (pure, no I/O).

The bridge does the VNC authentication itself, with the instance's password, and offers the
browser "no authentication": the password never leaves the server. After the handshake it
reads the client's message stream to record input (activity) and, for watch-only members,
drops input messages so they never reach the VNC server.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from spawners.vncauth import vnc_auth_response

__all__ = ["vnc_auth_response"]

VERSION = b"RFB 003.008\n"
SEC_NONE = 1
SEC_VNC_AUTH = 2

# Client-to-server message types.
SET_PIXEL_FORMAT = 0
SET_ENCODINGS = 2
FB_UPDATE_REQUEST = 3
KEY_EVENT = 4
POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
ENABLE_CONTINUOUS_UPDATES = 150
CLIENT_FENCE = 248
XVP = 250
SET_DESKTOP_SIZE = 251
QEMU = 255

INPUT = frozenset({KEY_EVENT, POINTER_EVENT, CLIENT_CUT_TEXT, SET_DESKTOP_SIZE, XVP, QEMU})
"""Messages that change the desktop: dropped for watch-only members."""


class ProtocolError(Exception):
    pass


@dataclass(frozen=True)
class Message:
    kind: int
    data: bytes


class ClientStream:
    """Splits the client's byte stream (after the handshake) into whole messages.

    Bytes arrive in arbitrary pieces (WebSocket frames need not align with messages);
    :meth:`feed` returns the messages completed so far. An unknown message type cannot be
    measured, so it ends the stream with :class:`ProtocolError`.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        while self._buf:
            size = self._size()
            if size is None or len(self._buf) < size:
                return
            chunk = bytes(self._buf[:size])
            del self._buf[:size]
            yield Message(chunk[0], chunk)

    def _size(self) -> int | None:
        """The length of the message at the head of the buffer, None if not yet known."""
        b = self._buf
        kind = b[0]
        fixed = {SET_PIXEL_FORMAT: 20, FB_UPDATE_REQUEST: 10, KEY_EVENT: 8, POINTER_EVENT: 6,
                 ENABLE_CONTINUOUS_UPDATES: 10, XVP: 4}
        if kind in fixed:
            return fixed[kind]
        if kind == SET_ENCODINGS:
            return None if len(b) < 4 else 4 + 4 * struct.unpack_from(">H", b, 2)[0]
        if kind == CLIENT_CUT_TEXT:
            if len(b) < 8:
                return None
            # Extended clipboard sends a negative length (its absolute value is the size).
            return 8 + abs(struct.unpack_from(">i", b, 4)[0])
        if kind == CLIENT_FENCE:
            return None if len(b) < 9 else 9 + b[8]
        if kind == SET_DESKTOP_SIZE:
            return None if len(b) < 8 else 8 + 16 * b[6]
        if kind == QEMU:
            if len(b) < 2:
                return None
            if b[1] == 0:  # extended key event
                return 12
            if b[1] == 1:  # audio
                return None if len(b) < 4 else (4 if struct.unpack_from(">H", b, 2)[0] != 2
                                                 else 10)
        raise ProtocolError(f"unsupported client message type {kind}")

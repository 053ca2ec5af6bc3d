"""Just enough of the RFB (VNC) protocol for the desktop bridge (pure, no I/O).

The bridge does the VNC authentication itself, with the instance's password, and offers the
browser "no authentication": the password never leaves the server. After the handshake it
reads the client's message stream to record input (activity) and, for watch-only members,
drops input messages so they never reach the VNC server (:func:`forwarded` is the policy).
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

KNOWN = frozenset({SET_PIXEL_FORMAT, SET_ENCODINGS, FB_UPDATE_REQUEST, KEY_EVENT, POINTER_EVENT,
                   CLIENT_CUT_TEXT, ENABLE_CONTINUOUS_UPDATES, CLIENT_FENCE, XVP,
                   SET_DESKTOP_SIZE, QEMU})
"""The client messages the bridge can measure; any other type ends the connection."""

WATCH = frozenset({SET_PIXEL_FORMAT, SET_ENCODINGS, FB_UPDATE_REQUEST,
                   ENABLE_CONTINUOUS_UPDATES, CLIENT_FENCE})
"""Messages that only shape what this one connection receives: allowed to everyone."""

INPUT = KNOWN - WATCH
"""Messages that change the desktop (keys, pointer, clipboard, screen size, power (XVP),
QEMU key and audio): forwarded for members who may give input, dropped for the others."""

MAX_FENCE_PAYLOAD = 64  # the protocol's own bound


def forwarded(kind: int, can_input: bool) -> bool:
    """THE watch-only policy: does a client message of ``kind`` reach the VNC server?"""
    return kind in WATCH or (can_input and kind in INPUT)


class ProtocolError(Exception):
    pass


def relay(stream: ClientStream, data: bytes, can_input: bool) -> tuple[bytes, bool]:
    """Feed ``data`` from the browser: the bytes that reach the VNC server under
    :func:`forwarded`, and whether they held input (the instance is in use). Watch-only
    members' clipboard text is read past, never held. Raises :class:`ProtocolError`."""
    out = bytearray()
    used = False
    for msg in stream.feed(data, keep_clipboard=can_input):
        if msg.discarded or not forwarded(msg.kind, can_input):
            continue
        used = used or msg.kind in INPUT
        out += msg.data
    return bytes(out), used


@dataclass(frozen=True)
class Message:
    """One client message. A ``discarded`` one is a clipboard message read past without
    being kept (too long, or its sender may not use the clipboard): ``data`` is then only
    its 8-byte header, and it must not be forwarded."""

    kind: int
    data: bytes
    discarded: bool = False


def cut_text_length(header: bytes | bytearray) -> int:
    """The payload length of a ClientCutText from its 8-byte header. The extended
    clipboard sends a negative length; its absolute value is the size."""
    return abs(struct.unpack_from(">i", header, 4)[0])


class ClientStream:
    """Splits the client's byte stream (after the handshake) into whole messages.

    Bytes arrive in arbitrary pieces (WebSocket frames need not align with messages);
    :meth:`feed` returns the messages completed so far, the same ones whatever the
    pieces. Clipboard text longer than ``max_cut_text``, or any clipboard text when
    ``keep_clipboard`` is false, is counted as it arrives and never held. An unknown
    message type (or an impossible length) cannot be measured, so it ends the stream with
    :class:`ProtocolError`.
    """

    def __init__(self, max_cut_text: int = 1024 * 1024) -> None:
        self.max_cut_text = max_cut_text
        self._buf = bytearray()
        self._skip = 0  # bytes of a discarded clipboard message still to read past

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)

    def feed(self, data: bytes, keep_clipboard: bool = True) -> Iterator[Message]:
        view = memoryview(data)
        if self._skip:
            passed = min(self._skip, len(view))
            self._skip -= passed
            view = view[passed:]
        self._buf += view
        while self._buf:
            if self._buf[0] == CLIENT_CUT_TEXT and len(self._buf) >= 8:
                text = cut_text_length(self._buf)
                if text > self.max_cut_text or not keep_clipboard:
                    header = bytes(self._buf[:8])
                    self._skip = max(0, 8 + text - len(self._buf))
                    del self._buf[:8 + text]
                    yield Message(CLIENT_CUT_TEXT, header, discarded=True)
                    continue
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
            return None if len(b) < 8 else 8 + cut_text_length(b)
        if kind == CLIENT_FENCE:
            if len(b) < 9:
                return None
            if b[8] > MAX_FENCE_PAYLOAD:
                raise ProtocolError(f"fence payload of {b[8]} bytes (at most 64)")
            return 9 + b[8]
        if kind == SET_DESKTOP_SIZE:
            return None if len(b) < 8 else 8 + 16 * b[6]
        if kind == QEMU:
            if len(b) < 2:
                return None
            if b[1] == 0:  # extended key event
                return 12
            if b[1] == 1:  # audio: enable (0), disable (1), set format (2)
                if len(b) < 4:
                    return None
                operation = struct.unpack_from(">H", b, 2)[0]
                if operation in (0, 1):
                    return 4
                if operation == 2:
                    return 10
                raise ProtocolError(f"unsupported QEMU audio operation {operation}")
            raise ProtocolError(f"unsupported QEMU client message {b[1]}")
        raise ProtocolError(f"unsupported client message type {kind}")

"""A minimal RFB client over Atrium's WebSocket bridge, for tests (raw encoding only)."""

from __future__ import annotations

import asyncio
import struct

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect


class RfbClient:
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.width = self.height = 0
        self.bpp = 4
        self.frame = bytearray()

    @classmethod
    async def connect(cls, url: str, token: str | None) -> RfbClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn = await websocket_connect(HTTPRequest(url, headers=headers),
                                       subprotocols=["binary"])
        client = cls(conn)
        await client._handshake()
        return client

    async def _read(self, n: int, timeout: float = 10) -> bytes:
        while len(self.buf) < n:
            msg = await asyncio.wait_for(self.conn.read_message(), timeout)
            if msg is None:
                raise ConnectionError("the bridge closed the connection")
            self.buf += msg if isinstance(msg, bytes) else msg.encode()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _send(self, data: bytes) -> None:
        self.conn.write_message(data, binary=True)

    async def _handshake(self) -> None:
        version = await self._read(12)
        assert version.startswith(b"RFB 003."), version
        self._send(b"RFB 003.008\n")
        count = (await self._read(1))[0]
        types = await self._read(count)
        assert types == bytes([1]), f"the bridge must offer no-auth only, got {list(types)}"
        self._send(b"\x01")
        assert struct.unpack(">I", await self._read(4))[0] == 0
        self._send(b"\x01")  # shared
        head = await self._read(24)
        self.width, self.height = struct.unpack(">HH", head[:4])
        self.bpp = head[4] // 8
        name_len = struct.unpack(">I", head[20:24])[0]
        self.name = (await self._read(name_len)).decode()
        self.frame = bytearray(self.width * self.height * self.bpp)
        self._send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only

    def request(self, incremental: bool) -> None:
        self._send(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height))

    async def update(self, timeout: float = 10) -> int:
        """Read one FramebufferUpdate into ``frame``; returns the number of changed pixels."""
        while True:
            kind = (await self._read(1, timeout))[0]
            if kind == 0:
                break
            if kind == 2:  # bell
                continue
            if kind == 3:  # server cut text
                await self._read(3)
                size = struct.unpack(">I", await self._read(4))[0]
                await self._read(size)
                continue
            raise AssertionError(f"unexpected server message {kind}")
        await self._read(1)
        rects = struct.unpack(">H", await self._read(2))[0]
        changed = 0
        for _ in range(rects):
            x, y, w, h, enc = struct.unpack(">HHHHi", await self._read(12))
            assert enc == 0, f"asked for raw only, got encoding {enc}"
            data = await self._read(w * h * self.bpp, timeout)
            row = w * self.bpp
            for line in range(h):
                start = ((y + line) * self.width + x) * self.bpp
                new = data[line * row:(line + 1) * row]
                old = self.frame[start:start + row]
                if new != old:
                    changed += sum(1 for i in range(0, row, self.bpp)
                                   if new[i:i + self.bpp] != old[i:i + self.bpp])
                    self.frame[start:start + row] = new
        return changed

    def pointer(self, x: int, y: int, buttons: int) -> None:
        self._send(struct.pack(">BBHH", 5, buttons, x, y))

    def key(self, keysym: int, down: bool) -> None:
        self._send(struct.pack(">BBxxI", 4, int(down), keysym))

    def close(self) -> None:
        self.conn.close()

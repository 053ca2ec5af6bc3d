"""A resolver that answers IP literals (and sessions' Unix sockets) at once.

Tornado's default resolver sends every host, even ``127.0.0.1``, to ``getaddrinfo`` in a
thread; sessions are addressed by IP (pod IPs, fixed IPs, loopback ports), so the proxy
would pay a thread hop per proxied request for nothing. Sandboxed local sessions listen on
Unix sockets: their reserved ``*.atrium-unix`` host names (see :mod:`spawners.endpoints`)
resolve to ``(AF_UNIX, path)``, which Tornado's HTTP and WebSocket clients then connect to.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from tornado.netutil import DefaultLoopResolver, Resolver

from spawners.endpoints import unix_path_of_host


class IPLiteralResolver(Resolver):
    def initialize(self) -> None:
        self._fallback = DefaultLoopResolver()

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        path = unix_path_of_host(host)
        if path is not None:
            return [(socket.AF_UNIX, path)]
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return await self._fallback.resolve(host, port, family)
        if address.version == 4:
            return [(socket.AF_INET, (host, port))]
        return [(socket.AF_INET6, (host, port, 0, 0))]

    def close(self) -> None:
        self._fallback.close()

"""Request body limits for the whole portal, answered with a 413 before any body is read.

Every request may carry at most ``Limits.max_body`` bytes; only the streaming lab proxy
raises that bound, and only once the caller is authorised (:func:`lift`). Tornado itself
refuses an over-long declared ``Content-Length`` by closing the connection with no answer;
:class:`BodyLimitServer` instead checks the declared length after the handler's
``prepare()`` had its say and, when it is too large, takes the connection over, answers
``413`` JSON at once and closes it gracefully (the unread body is drained for a moment and
dropped, so the client sees the answer rather than a reset). A chunked body that grows
past the bound is cut off by Tornado (``400``, connection closed); nothing is buffered
beyond the bound either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import weakref
from collections.abc import Awaitable
from typing import Any

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError

from orchestrator.settings_limits import Limits

log = logging.getLogger("atrium.limits")

LINGER = 5.0  # seconds a refused client's unread body is drained before the close
LINGER_IDLE = 1.0  # ... or until it sends nothing for this long

# Connections whose bound was raised by lift(): the raised bound (Tornado keeps its own
# copy privately; this is the public side of the same fact).
_lifted: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def lift(request: httputil.HTTPServerRequest, limits: Limits) -> None:
    """Let this (authorised, streamed) request's body be as large and slow as a lab upload
    may be. Call from ``prepare()`` of a ``@stream_request_body`` handler."""
    conn: Any = request.connection
    conn.set_max_body_size(limits.lab_max_body)
    conn.set_body_timeout(limits.lab_body_timeout)
    _lifted[conn] = limits.lab_max_body


def declared_length(headers: httputil.HTTPHeaders) -> int | None:
    """The Content-Length a request declares (None: none, or not a number: Tornado
    answers those itself)."""
    raw = headers.get("Content-Length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


def too_large_response(limit: int) -> bytes:
    body = json.dumps({"error": {"status": 413, "message":
                                 f"the request body is too large (at most {limit} bytes)"}})
    return (f"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json; charset=UTF-8"
            f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}").encode()


class BodyLimit(httputil.HTTPMessageDelegate):
    """Wraps one request's delegate: refuses a declared body above the connection's bound."""

    def __init__(self, inner: httputil.HTTPMessageDelegate, conn: Any, limit: int) -> None:
        self.inner = inner
        self.conn = conn
        self.limit = limit
        self.refused = False

    async def _headers(self, start_line: Any, headers: httputil.HTTPHeaders) -> None:
        pending = self.inner.headers_received(start_line, headers)
        if pending is not None:
            await pending  # a streaming handler's prepare(): it may lift the bound
        limit = _lifted.get(self.conn, self.limit)
        length = declared_length(headers)
        if length is None or length <= limit or self.conn.stream is None:
            return
        self.refused = True
        stream: IOStream = self.conn.detach()  # Tornado stops reading this connection
        self.inner.on_connection_close()  # a streaming handler stops waiting for the body
        asyncio.get_running_loop().create_task(refuse(stream, too_large_response(limit)))

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders
                         ) -> Awaitable[None] | None:
        return self._headers(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None if self.refused else self.inner.data_received(chunk)

    def finish(self) -> None:
        if not self.refused:
            self.inner.finish()

    def on_connection_close(self) -> None:
        if not self.refused:
            self.inner.on_connection_close()


async def refuse(stream: IOStream, response: bytes) -> None:
    """Answer, stop writing, drain what the client still sends (bounded), close."""
    try:
        await stream.write(response)
        if stream.socket is not None:
            stream.socket.shutdown(socket.SHUT_WR)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER
        while loop.time() < deadline:
            await asyncio.wait_for(stream.read_bytes(64 * 1024, partial=True),
                                   min(LINGER_IDLE, deadline - loop.time()))
    except (StreamClosedError, OSError, TimeoutError):
        pass
    finally:
        stream.close()


class BodyLimitServer(httputil.HTTPServerConnectionDelegate):
    """The application behind :class:`BodyLimit` (give it to ``HTTPServer``)."""

    def __init__(self, app: httputil.HTTPServerConnectionDelegate, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection
                      ) -> httputil.HTTPMessageDelegate:
        return BodyLimit(self.app.start_request(server_conn, request_conn), request_conn,
                         self.limits.max_body)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


def make_server(app: httputil.HTTPServerConnectionDelegate, limits: Limits) -> HTTPServer:
    """The portal's HTTP server with every bound of ``limits`` in place."""
    return HTTPServer(BodyLimitServer(app, limits), xheaders=False,
                      max_body_size=limits.max_body, body_timeout=limits.body_timeout,
                      idle_connection_timeout=limits.idle_timeout)

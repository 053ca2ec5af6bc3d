"""Session endpoints: TCP URLs or Unix sockets, and how the portal opens them.

A backend reports each protocol's endpoint as a URL (``http://10.0.0.5:8888``,
``vnc://127.0.0.1:5901``) or, for a server listening on a Unix socket (sandboxed local
sessions), as ``unix:<absolute path>``. Consumers go through this module:

* :func:`http_base` gives an ``http://`` base URL for Tornado's HTTP and WebSocket clients:
  a Unix socket becomes the reserved host ``<hex of the path>.atrium-unix``, which the
  portal's resolver (:func:`unix_path_of_host`, used by ``web/resolver.py``) answers with
  ``(AF_UNIX, path)``. Stateless, so any process of the portal can resolve it.
* :func:`open_stream` opens an asyncio stream (the desktop bridge, the probes).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

UNIX_PREFIX = "unix:"
UNIX_HOST_SUFFIX = ".atrium-unix"
_LABEL = 62  # DNS labels hold at most 63 characters


def unix_endpoint(path: str) -> str:
    return f"{UNIX_PREFIX}{path}"


def unix_path(endpoint: str) -> str | None:
    """The socket path of a ``unix:`` endpoint, None for a network URL."""
    if endpoint.startswith(UNIX_PREFIX):
        path = endpoint[len(UNIX_PREFIX):]
        return path if path.startswith("/") else None
    return None


def http_base(endpoint: str) -> str:
    """An ``http://`` base URL reaching ``endpoint`` (see the module docstring)."""
    path = unix_path(endpoint)
    if path is None:
        return endpoint
    hexed = path.encode().hex()
    labels = [hexed[i:i + _LABEL] for i in range(0, len(hexed), _LABEL)]
    return f"http://{'.'.join(labels)}{UNIX_HOST_SUFFIX}"


def unix_path_of_host(host: str) -> str | None:
    """The socket path a reserved ``*.atrium-unix`` host stands for, None otherwise."""
    if not host.endswith(UNIX_HOST_SUFFIX):
        return None
    try:
        path = bytes.fromhex(host[:-len(UNIX_HOST_SUFFIX)].replace(".", "")).decode()
    except ValueError:
        return None
    return path if path.startswith("/") else None


async def open_stream(endpoint: str, timeout: float = 10.0
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a ``unix:`` endpoint or to the host:port of a URL endpoint."""
    path = unix_path(endpoint)
    if path is not None:
        return await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    parts = urlsplit(endpoint)
    return await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), timeout)

"""Protocol probes: does a session's JupyterLab (or desktop) answer yet?"""

from __future__ import annotations

import asyncio

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from spawners.endpoints import open_stream, unix_path


async def _unix_http_status(path: str, target: str, token: str, timeout: float) -> int:
    """The status code of one HTTP/1.0 GET over a Unix socket (0 when nothing answers)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    except (TimeoutError, OSError):
        return 0
    try:
        writer.write(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n"
                     f"Authorization: token {token}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    except (TimeoutError, OSError):
        return 0
    finally:
        writer.close()


async def jupyter_ready(endpoint: str, base_url: str, token: str, timeout: float = 2.0) -> bool:
    """True when ``GET {base_url}api/status`` answers 200 with the instance token
    (``endpoint``: an http URL or a ``unix:`` socket, see :mod:`spawners.endpoints`)."""
    path = unix_path(endpoint)
    if path is not None:
        return await _unix_http_status(path, f"{base_url}api/status", token, timeout) == 200
    request = HTTPRequest(f"{endpoint.rstrip('/')}{base_url}api/status",
                          headers={"Authorization": f"token {token}"},
                          connect_timeout=timeout, request_timeout=timeout)
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except (TimeoutError, OSError, HTTPClientError):
        return False
    return response.code == 200


async def tcp_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


async def rfb_ready(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a VNC server at host:port greets with an RFB version."""
    netloc = f"[{host}]" if ":" in host else host
    return await rfb_endpoint_ready(f"vnc://{netloc}:{port}", timeout)


async def rfb_endpoint_ready(endpoint: str, timeout: float = 2.0) -> bool:
    """True when the VNC server at ``endpoint`` (``vnc://host:port`` or ``unix:``) greets
    with an RFB version."""
    try:
        reader, writer = await open_stream(endpoint, timeout)
    except (TimeoutError, OSError):
        return False
    try:
        banner = await asyncio.wait_for(reader.readexactly(12), timeout)
        return banner.startswith(b"RFB ")
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()

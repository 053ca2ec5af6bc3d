"""Protocol probes: does a session's JupyterLab (or desktop) answer yet?"""

from __future__ import annotations

import asyncio

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


async def jupyter_ready(endpoint: str, base_url: str, token: str, timeout: float = 2.0) -> bool:
    """True when ``GET {base_url}api/status`` answers 200 with the instance token."""
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
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    try:
        banner = await asyncio.wait_for(reader.readexactly(12), timeout)
        return banner.startswith(b"RFB ")
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()

"""Reaching instances at their own origins (``<uid>.sessions.localhost``) from tests.

Browsers resolve ``*.localhost`` to loopback; Python's resolver does not, so these clients
connect to 127.0.0.1 and keep the name in the Host header (and in their cookie jar, which
thus keeps the portal's and each instance host's cookies apart, as a browser does).
"""

from __future__ import annotations

import re

import httpx

from tests.conftest import AtriumServer


class LoopbackTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.endswith(".localhost"):
            request = httpx.Request(request.method, request.url.copy_with(host="127.0.0.1"),
                                    headers=request.headers, stream=request.stream,
                                    extensions=request.extensions)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def session_origin(server: AtriumServer, uid: str) -> str:
    return f"http://{uid}.sessions.localhost:{server.port}"


def browser_client(server: AtriumServer, username: str | None = None) -> httpx.Client:
    """A cookie-holding client like a browser's, logged in as ``username`` (demo login)."""
    client = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False,
                          transport=LoopbackTransport())
    if username:
        client.get("/login")
        r = client.post("/login", data={"username": username,
                                        "_xsrf": client.cookies["_xsrf"]})
        assert r.status_code == 302, r.text
    return client


def follow(client: httpx.Client, url: str, limit: int = 10) -> tuple[httpx.Response,
                                                                      list[str]]:
    """GET ``url`` following redirects across hosts; the answer and the URLs visited."""
    seen = [url]
    r = client.get(url)
    while r.is_redirect and len(seen) < limit:
        url = str(r.url.join(r.headers["Location"]))
        seen.append(url)
        r = client.get(url)
    return r, seen


def open_as_browser(client: httpx.Client, server: AtriumServer, uid: str,
                    path: str) -> httpx.Response:
    """Open ``/instances/<uid>/<path>`` from the portal as a browser does, through the
    instance's host and the ticket; a redirect to the login page is the answer itself."""
    r = client.get(f"{server.url}/instances/{uid}/{path}")
    for _ in range(10):
        if not r.is_redirect or r.headers["Location"].startswith("/login"):
            return r
        r = client.get(str(r.url.join(r.headers["Location"])))
    raise AssertionError("too many redirects")


def enter(client: httpx.Client, server: AtriumServer, uid: str,
          path: str = "lab/api/status") -> httpx.Response:
    """Open ``/instances/<uid>/<path>`` as a browser does: through the portal's ticket."""
    r, seen = follow(client, f"{server.url}/instances/{uid}/{path}")
    assert any(re.search(r"/ticket\?ticket=", u) for u in seen) or r.status_code >= 400, seen
    return r

"""Response headers: the security headers of Atrium's own pages and the allowlist of
headers a session's responses may pass on to the browser.

Atrium's pages (portal and instance hosts) load scripts and styles from their own origin
only - no inline script, no inline handler - and may not be framed. From a session's
response only the headers below reach the browser: no ``Set-Cookie`` (a session could
otherwise set or shadow cookies of its host), no ``Service-Worker-Allowed`` (a worker's
scope stays under the script's path), no ``Clear-Site-Data``, no CORS grants.
"""

from __future__ import annotations

from typing import Any

import tornado.web

PAGE_CSP = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
))

PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}

# What a session's answer to a script on the portal's address carries instead of its own
# policy: were it ever rendered there, it would run in an opaque origin.
SANDBOXED = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}

RESPONSE_ALLOWED = frozenset({
    "accept-ranges", "age", "allow", "cache-control", "content-disposition",
    "content-encoding", "content-language", "content-location", "content-range",
    "content-security-policy", "content-security-policy-report-only", "content-type",
    "etag", "expires", "last-modified", "location", "pragma", "retry-after", "vary",
    "www-authenticate", "x-content-type-options", "x-frame-options", "referrer-policy",
})


def passes(name: str) -> bool:
    """Whether a session's response header ``name`` may reach the browser."""
    return name.lower() in RESPONSE_ALLOWED


def set_page_headers(handler: tornado.web.RequestHandler) -> None:
    for name, value in PAGE_HEADERS.items():
        handler.set_header(name, value)


class StaticFiles(tornado.web.StaticFileHandler):
    """Atrium's static files (and noVNC's), with the page headers."""

    def set_default_headers(self) -> None:
        set_page_headers(self)

    def data_received(self, chunk: bytes) -> Any:  # pragma: no cover - GET only
        return None

"""Which host a request is for: the portal, one instance's own origin, or neither.

In ``subdomain`` mode (the default) instance ``<uid>`` is served at
``<scheme>://<uid>.<sessions domain>``, so what its owner and members put in it (notebook
output, a replaced server) runs on an origin of its own, never on the portal's. Requests
for any other name are refused (DNS rebinding): the portal's own name(s), IP literals
(which no rebinding site can send) and the instances' hosts are the only ones served.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest
from tornado.routing import Matcher, PathMatches

from orchestrator.settings import Settings

UID_LABEL = re.compile(r"[0-9a-f]{1,32}")


@dataclass(frozen=True)
class Origins:
    subdomains: bool
    scheme: str
    portal_url: str
    portal_names: frozenset[str]
    sessions_name: str  # e.g. "sessions.localhost"
    sessions_port: str  # "" for the scheme's default

    @classmethod
    def from_settings(cls, settings: Settings) -> Origins:
        public = urlsplit(settings.public_url)
        domain = settings.sessions_domain or "sessions.localhost" + (
            f":{public.port}" if public.port else "")
        name, _, port = domain.partition(":")
        return cls(subdomains=settings.session_origins == "subdomain",
                   scheme=public.scheme or "http", portal_url=settings.public_url.rstrip("/"),
                   portal_names=frozenset({(public.hostname or "").lower(),
                                           *settings.allowed_hosts}),
                   sessions_name=name, sessions_port=port)

    def session_uid(self, host_name: str) -> str | None:
        """The instance whose own host ``host_name`` is, else None (also in path mode)."""
        if not self.subdomains:
            return None
        label, _, rest = host_name.lower().partition(".")
        return label if rest == self.sessions_name and UID_LABEL.fullmatch(label) else None

    def is_portal(self, host_name: str) -> bool:
        name = host_name.lower()
        if name in self.portal_names:
            return True
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            return False
        return True

    def session_origin(self, uid: str) -> str:
        port = f":{self.sessions_port}" if self.sessions_port else ""
        return f"{self.scheme}://{uid}.{self.sessions_name}{port}"

    def lab_url(self, uid: str) -> str:
        """Where a browser opens the instance's JupyterLab."""
        base = self.session_origin(uid) if self.subdomains else ""
        return f"{base}/instances/{uid}/lab/"


class SessionHost(Matcher):
    """Requests addressed to an instance's own host."""

    def __init__(self, origins: Origins) -> None:
        self.origins = origins

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        return {} if self.origins.session_uid(request.host_name) else None


class PortalHost(Matcher):
    """Requests addressed to the portal by one of its names."""

    def __init__(self, origins: Origins) -> None:
        self.origins = origins

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        return {} if self.origins.is_portal(request.host_name) else None


class SessionPath(Matcher):
    """A path pattern whose first group is an instance uid, matched only on that
    instance's own host (a host never serves another instance), optionally only for
    WebSocket upgrades (``websocket=True``) or only for other requests (False)."""

    def __init__(self, origins: Origins, pattern: str, websocket: bool | None = None) -> None:
        self.origins = origins
        self.path = PathMatches(pattern)
        self.websocket = websocket

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if self.websocket is not None and upgrade != self.websocket:
            return None
        found = self.path.match(request)
        if found is None or not found.get("path_args"):
            return None
        uid = found["path_args"][0]  # Tornado passes path arguments as bytes here
        if isinstance(uid, bytes):
            uid = uid.decode("ascii", "replace")
        if uid != self.origins.session_uid(request.host_name):
            return None
        return found

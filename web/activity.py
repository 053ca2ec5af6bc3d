"""What counts as someone using an instance, recorded in memory (``Portal.activity``) and
written to ``Instance.last_seen_at`` in batches by the activity flush (orchestrator/lifetime.py).

* Desktop: keyboard and mouse input through the bridge (web/desktop.py).
* JupyterLab, through the proxy: every WebSocket message from the browser (running code,
  typing in a terminal), every request that changes something (any method but GET/HEAD:
  saving, creating, starting a kernel) and every page the browser navigates to (opening or
  reloading JupyterLab: reconnecting). Not the GET requests JupyterLab's scripts send by
  themselves (kernels, sessions, terminals, file listings are polled as long as a tab is
  open): counting them would keep an abandoned tab's instance alive forever.
"""

from __future__ import annotations

import time

from tornado.httputil import HTTPHeaders


def note(activity: dict[str, float], uid: str) -> None:
    """Someone used ``uid`` now (a dict write: nothing else happens per event)."""
    activity[uid] = time.time()


def is_use(method: str | None, headers: HTTPHeaders) -> bool:
    """Does this proxied JupyterLab request count as use (see the module)?"""
    if method not in ("GET", "HEAD"):
        return True
    return headers.get("Sec-Fetch-Mode") == "navigate" or "text/html" in headers.get(
        "Accept", "")

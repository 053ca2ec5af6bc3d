"""Graceful shutdown on SIGTERM, within ATRIUM_SHUTDOWN_GRACE seconds.

The order matters to a load balancer and to the users' browsers:

1. ``/readyz`` fails at once (``portal.draining``): Kubernetes takes the pod out of the
   Service's endpoints; for ATRIUM_SHUTDOWN_DRAIN seconds the pod still serves whatever the
   ingress sends before it has noticed;
2. the listener closes (no new connections);
3. open WebSockets (JupyterLab kernels, desktops) are closed with 1001 "going away":
   JupyterLab and noVNC reconnect, through the Service, to another replica; the session
   itself is not touched (it runs in its own pod or VM);
4. in-flight HTTP requests get what is left of the grace period;

the caller then flushes activity, hands over the scheduler lease and closes the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from tornado.httpserver import HTTPServer

from web.portal import Portal

log = logging.getLogger("atrium")
FLUSH_RESERVE = 3.0  # seconds of the grace period kept for flushing and the lease hand-over


async def drain(portal: Portal, server: HTTPServer, grace: float, drain_delay: float) -> None:
    """Steps 1-4 above; returns when done or when the grace period (less the reserve) ends."""
    deadline = time.monotonic() + max(grace - FLUSH_RESERVE, 0.0)
    portal.draining = True
    log.info("draining: not ready; closing in %.0f s", drain_delay)
    await asyncio.sleep(max(min(drain_delay, deadline - time.monotonic()), 0.0))
    server.stop()
    sockets = portal.presence.everyone()
    for conn in sockets:
        close = getattr(conn, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close(1001, "the portal is restarting: reconnect")
    while portal.presence.everyone() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = deadline - time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), max(left, 0.1))
    log.info("drained (%d WebSockets asked to reconnect elsewhere)", len(sockets))

"""Who is connected to which instance, and revocation on open connections.

Open WebSockets (JupyterLab kernels and terminals, desktop bridges) register here. The
owner counts as connected while they have an open connection or made a proxied request in
the last :data:`RECENT` seconds. :meth:`Presence.revalidate` re-asks the policy for every
open connection of an instance - right after a membership change in this process, and
every few seconds for all (so changes made by another replica, or the owner leaving, take
effect within seconds) - and closes or narrows those no longer allowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from web.routes import Route

log = logging.getLogger("atrium.presence")

RECENT = 120.0


class Connection(Protocol):
    user_id: int

    def revalidate(self, route: Route | None, owner_present: bool) -> None:
        """Close the connection, or narrow it, if the policy no longer allows it."""


class Presence:
    def __init__(self) -> None:
        self._open: dict[str, set[Connection]] = {}
        self._requests: dict[tuple[str, int], float] = {}

    def opened(self, uid: str, conn: Connection) -> None:
        self._open.setdefault(uid, set()).add(conn)

    def closed(self, uid: str, conn: Connection) -> None:
        conns = self._open.get(uid)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._open[uid]

    def seen(self, uid: str, user_id: int) -> None:
        self._requests[(uid, user_id)] = time.monotonic()

    def connected(self, uid: str, user_id: int) -> bool:
        if any(c.user_id == user_id for c in self._open.get(uid, ())):
            return True
        return time.monotonic() - self._requests.get((uid, user_id), -RECENT) < RECENT

    def connections(self, uid: str) -> int:
        return len(self._open.get(uid, ()))

    def everyone(self) -> list[Connection]:
        """Every open connection of this process (closed on shutdown)."""
        return [c for conns in self._open.values() for c in conns]

    async def revalidate(self, uid: str, route_of: Callable[[str], Awaitable[Route | None]]
                         ) -> None:
        conns = list(self._open.get(uid, ()))
        if not conns:
            return
        route = await route_of(uid)
        present = route is not None and self.connected(uid, route.access.owner_id)
        for conn in conns:
            conn.revalidate(route, present)

    async def watch(self, route_of: Callable[[str], Awaitable[Route | None]],
                    interval: float = 3.0) -> None:
        """Revalidate every open connection every ``interval`` seconds (runs forever)."""
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self._requests = {k: t for k, t in self._requests.items() if now - t < RECENT}
            for uid in list(self._open):
                try:
                    await self.revalidate(uid, route_of)
                except Exception:
                    log.exception("revalidating connections of %s failed", uid)

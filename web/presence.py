"""Who is connected to which instance, and revocation on open connections.

Open WebSockets (JupyterLab kernels and terminals, desktop bridges) and in-flight proxied
HTTP requests register here with the :class:`~web.credentials.Credential` they were opened
with. WebSockets are also rows in the database (orchestrator/connections.py), kept fresh by
:meth:`Presence.heartbeat`, and so are recent proxied requests: the owner counts as present
(:meth:`Presence.present`) while connected through any replica or after a request in the
last :data:`RECENT` seconds.

:meth:`Presence.revalidate` resolves each open connection's credential again and re-asks
the policy - at once when an announcement (web/revocation.py) says something changed, and
every few seconds for all (the owner leaving, the safety net) - and closes or narrows those
no longer allowed. HTTP streams are aborted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator import connections as rows
from orchestrator.announce import Announcer, Change
from orchestrator.db import Database
from orchestrator.models import utcnow
from sharing.policy import Principal
from web.credentials import Credential
from web.routes import Route, TtlCache

log = logging.getLogger("atrium.presence")

RECENT = rows.RECENT
HEARTBEAT = 5.0  # seconds between heartbeats (well under rows.EXPIRY)
REQUEST_WRITE = 30.0  # a user's requests to an instance are written at most this often


class Connection(Protocol):
    principal: Any  # the Principal it acts as; refreshed before each revalidation

    def revalidate(self, route: Route | None, owner_present: bool) -> None:
        """Close the connection, or narrow it, if the policy no longer allows it."""


@dataclass
class Entry:
    uid: str
    conn_id: str
    credential: Credential
    protocol: str  # "lab", "desktop" (rows in the database) or "http" (in memory only)


Resolver = Callable[[Credential], Awaitable[Principal | None]]
RouteOf = Callable[[str], Awaitable[Route | None]]


class Presence:
    def __init__(self) -> None:
        self._open: dict[str, dict[Connection, Entry]] = {}
        self._requests: dict[tuple[str, int], float] = {}  # (uid, user) -> last request
        self._written: dict[tuple[str, int], float] = {}  # (uid, user) -> last row write
        self.replica = f"{secrets.token_hex(6)}"
        self.db: Database | None = None
        self.announcer: Announcer | None = None
        self._route_of: RouteOf | None = None
        self._resolve: Resolver | None = None
        self._remote: TtlCache[str, frozenset[int]] = TtlCache(self._load_remote, 3.0)
        self._background: set[asyncio.Task[Any]] = set()

    def attach(self, db: Database, announcer: Announcer, route_of: RouteOf,
               resolve: Resolver, replica: str = "") -> None:
        """Connect to the database, the announcements and the caches (build_portal)."""
        self.db, self.announcer = db, announcer
        self._route_of, self._resolve = route_of, resolve
        if replica:
            self.replica = f"{replica[:40]}/{self.replica}"

    # --- registering --------------------------------------------------------------------

    def opened(self, uid: str, conn: Connection, credential: Credential | None,
               protocol: str) -> None:
        if credential is None:  # anonymous connections are refused before they open
            return
        entry = Entry(uid, f"{self.replica}/{secrets.token_hex(8)}", credential, protocol)
        self._open.setdefault(uid, {})[conn] = entry
        if protocol != rows.HTTP:
            self._spawn(self._write_opened(entry))

    def closed(self, uid: str, conn: Connection) -> None:
        conns = self._open.get(uid)
        entry = conns.pop(conn, None) if conns is not None else None
        if conns is not None and not conns:
            del self._open[uid]
        if entry is not None and entry.protocol != rows.HTTP:
            self._spawn(self._write_closed(entry))

    def seen(self, uid: str, user_id: int) -> None:
        now = time.monotonic()
        self._requests[(uid, user_id)] = now
        if now - self._written.get((uid, user_id), -REQUEST_WRITE) >= REQUEST_WRITE:
            self._written[(uid, user_id)] = now
            self._spawn(self._write_request(uid, user_id))

    # --- asking -------------------------------------------------------------------------

    def connected(self, uid: str, user_id: int) -> bool:
        """Connected to this process (open connection or recent request)."""
        if any(e.credential.user_id == user_id for e in self._open.get(uid, {}).values()):
            return True
        return time.monotonic() - self._requests.get((uid, user_id), -RECENT) < RECENT

    async def present(self, uid: str, user_id: int) -> bool:
        """Connected through any replica (this one, or a fresh row of another)."""
        if self.connected(uid, user_id):
            return True
        if self.db is None:
            return False
        return user_id in await self._remote.get(uid)

    def connections(self, uid: str) -> int:
        return len(self._open.get(uid, {}))

    def users(self) -> dict[int, int]:
        """user id -> open connections here (for the connection cap and metrics)."""
        counts: dict[int, int] = {}
        for conns in self._open.values():
            for entry in conns.values():
                counts[entry.credential.user_id] = counts.get(entry.credential.user_id, 0) + 1
        return counts

    def everyone(self) -> list[Connection]:
        """Every open connection of this process (closed on shutdown)."""
        return [c for conns in self._open.values() for c in conns]

    # --- revalidating -------------------------------------------------------------------

    def forget_remote(self, uid: str | None = None) -> None:
        """Another replica's connections changed: ask the database again."""
        if uid is None:
            self._remote.clear()
        else:
            self._remote.invalidate(uid)

    async def revalidate(self, uid: str,
                         match: Callable[[Credential], bool] | None = None) -> None:
        """Re-check the open connections of ``uid`` (those whose credential ``match``es)."""
        conns = [(c, e) for c, e in self._open.get(uid, {}).items()
                 if match is None or match(e.credential)]
        if not conns or self._route_of is None or self._resolve is None:
            return
        route = await self._route_of(uid)
        present = route is not None and await self.present(uid, route.access.owner_id)
        for conn, entry in conns:
            principal = await self._resolve(entry.credential)
            if self._open.get(uid, {}).get(conn) is not entry:
                continue  # closed meanwhile
            conn.principal = principal
            try:
                conn.revalidate(route, present)
            except Exception:
                log.exception("revalidating a connection to %s failed", uid)

    async def revalidate_where(self, match: Callable[[Credential], bool]) -> None:
        """Re-check every open connection whose credential ``match``es."""
        for uid in [u for u, conns in self._open.items()
                    if any(match(e.credential) for e in conns.values())]:
            await self.revalidate(uid, match)

    async def revalidate_all(self) -> None:
        for uid in list(self._open):
            try:
                await self.revalidate(uid)
            except Exception:
                log.exception("revalidating connections of %s failed", uid)

    async def watch(self, interval: float = 3.0) -> None:
        """Revalidate every open connection every ``interval`` seconds and keep the rows
        fresh (runs until cancelled)."""
        beat = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self._requests = {k: t for k, t in self._requests.items() if now - t < RECENT}
            self._written = {k: t for k, t in self._written.items() if now - t < RECENT}
            if now - beat >= HEARTBEAT:
                beat = now
                try:
                    await self.heartbeat()
                except Exception:
                    log.exception("presence heartbeat failed")
            await self.revalidate_all()

    # --- rows ---------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        if self.db is None:
            return
        ids = [e.conn_id for conns in self._open.values() for e in conns.values()
               if e.protocol != rows.HTTP]
        async with self.db.session() as s:
            await rows.heartbeat(s, self.replica, ids)
            await s.commit()

    async def stop(self) -> None:
        """Remove this process's rows (a clean shutdown; a crash's rows expire)."""
        for task in list(self._background):
            task.cancel()
        if self.db is None:
            return
        async with self.db.session() as s:
            await rows.forget_replica(s, self.replica)
            await s.commit()

    async def _load_remote(self, uid: str) -> frozenset[int]:
        assert self.db is not None
        async with self.db.session() as s:
            return await rows.present_users(s, uid)

    async def _announce(self, session: Any, uid: str) -> None:
        if self.announcer is not None:
            await self.announcer.commit(session, Change("presence", uid))
        else:
            await session.commit()

    async def _write_opened(self, entry: Entry) -> None:
        assert self.db is not None
        async with self.db.session() as s:
            await rows.opened(s, entry.conn_id, entry.uid, entry.credential.user_id,
                              entry.protocol, self.replica)
            await self._announce(s, entry.uid)

    async def _write_closed(self, entry: Entry) -> None:
        assert self.db is not None
        async with self.db.session() as s:
            await rows.closed(s, entry.conn_id)
            await self._announce(s, entry.uid)

    async def _write_request(self, uid: str, user_id: int) -> None:
        assert self.db is not None
        async with self.db.session() as s:
            await rows.requested(s, self.replica, uid, user_id, utcnow())
            await self._announce(s, uid)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self.db is None:
            work.close()
            return

        async def logged() -> None:
            try:
                await work
            except Exception:  # presence rows are best effort; the heartbeat repairs them
                log.exception("recording a connection failed")

        task = asyncio.get_running_loop().create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

"""Announcements: changes that affect authorization, told to every process of a deployment.

A handler that commits such a change (members, roles, tokens, login sessions, sharing
settings, user roles, the catalogue, an instance deleted) announces it in the same step
(:meth:`Announcer.commit`). Every process then drops what it cached about the change and
re-checks its open connections at once; the per-process cache lifetimes remain only as a
safety net.

* On PostgreSQL an announcement is a ``NOTIFY`` queued in the committing transaction: sent
  at commit, never for a rollback. Each process listens on a dedicated asyncpg connection
  (:meth:`Announcer.listen`); when that connection is lost it reconnects and then announces
  :data:`EVERYTHING` to itself, since it may have missed some.
* On SQLite (one process per database) announcements are delivered in-process.

The committing process delivers its own announcements directly after the commit, so they
take effect here even while the listener reconnects; it ignores their echo.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.db import Database

log = logging.getLogger("atrium.announce")

CHANNEL = "atrium_changes"
LISTENER_NAME = "atrium-listen"  # application_name of the listening connection
PAYLOAD_MAX = 7000  # PostgreSQL refuses NOTIFY payloads of 8000 bytes and more


@dataclass(frozen=True)
class Change:
    """One change. ``kind`` names what changed, ``key`` which one:

    * ``instance`` (uid): members, roles, sharing settings, status, secrets, deletion;
    * ``user`` (user id): a user's roles, groups or account;
    * ``session`` (digest of a login session): revoked (logout, revocation, provider);
    * ``token`` (SHA-256 of an API token): revoked;
    * ``presence`` (uid): a connection to the instance opened or closed somewhere;
    * ``catalogue`` / ``everything``: drop every cache.
    """

    kind: str
    key: str = ""


EVERYTHING = Change("everything")
KINDS = frozenset({"instance", "user", "session", "token", "presence", "catalogue",
                   "everything"})

Receiver = Callable[[Change], Awaitable[None]]


def encode(changes: Iterable[Change], origin: str) -> list[str]:
    """Payloads for ``changes`` (several per payload, each under :data:`PAYLOAD_MAX`)."""
    payloads: list[str] = []
    batch: list[list[str]] = []
    for change in changes:
        batch.append([change.kind, change.key])
        body = json.dumps({"o": origin, "c": batch}, separators=(",", ":"))
        if len(body) > PAYLOAD_MAX and len(batch) > 1:
            batch.pop()
            payloads.append(json.dumps({"o": origin, "c": batch}, separators=(",", ":")))
            batch = [[change.kind, change.key]]
    if batch:
        payloads.append(json.dumps({"o": origin, "c": batch}, separators=(",", ":")))
    return payloads


def decode(payload: str) -> tuple[str, list[Change]]:
    """(origin, changes) of a payload; unknown kinds and malformed parts are dropped."""
    try:
        data = json.loads(payload)
        origin = str(data.get("o", ""))
        items = list(data.get("c", []))
    except (ValueError, AttributeError, TypeError):
        return "", [EVERYTHING]  # unreadable: assume the worst
    changes = [Change(kind, str(key)) for kind, key in
               (i for i in items if isinstance(i, list) and len(i) == 2)
               if isinstance(kind, str) and kind in KINDS]
    return origin, changes


def asyncpg_dsn(database_url: str) -> str:
    """The plain libpq URL asyncpg connects with, from SQLAlchemy's ``postgresql+asyncpg``."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


class Announcer:
    """Publishes changes and hands every change (own and others') to the receivers."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.database_url = db.url
        self.postgres = not db.is_sqlite
        self.origin = secrets.token_hex(8)
        self.listening = asyncio.Event()  # set while the listener is connected
        self.reconnects = 0
        self._receivers: list[Receiver] = []
        self._deliveries: set[asyncio.Task[None]] = set()

    def subscribe(self, receiver: Receiver) -> None:
        self._receivers.append(receiver)

    async def stage(self, session: AsyncSession, changes: Iterable[Change]) -> None:
        """Queue ``changes`` in the session's transaction (PostgreSQL; sent at commit)."""
        if not self.postgres:
            return
        for payload in encode(changes, self.origin):
            await session.execute(text("SELECT pg_notify(:channel, :payload)"),
                                  {"channel": CHANNEL, "payload": payload})

    async def commit(self, session: AsyncSession, *changes: Change) -> None:
        """Commit the session and announce ``changes``: the one way to commit them."""
        await self.stage(session, changes)
        await session.commit()
        await self.deliver(changes)

    async def announce(self, changes: Iterable[Change]) -> None:
        """Announce changes committed earlier (prefer :meth:`commit`, in the same step)."""
        changes = list(changes)
        if self.postgres:
            async with self.db.session() as s:
                await self.stage(s, changes)
                await s.commit()
        await self.deliver(changes)

    async def deliver(self, changes: Iterable[Change]) -> None:
        """Hand ``changes`` to this process's receivers (a failing receiver is logged)."""
        for change in dict.fromkeys(changes):
            for receiver in self._receivers:
                try:
                    await receiver(change)
                except Exception:
                    log.exception("applying %s failed", change)

    # --- listening (PostgreSQL) -------------------------------------------------------

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, changes = decode(payload)
        if origin == self.origin:
            return  # delivered at commit already
        task = asyncio.get_running_loop().create_task(self.deliver(changes))
        self._deliveries.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._deliveries.discard)

    async def listen(self, check_interval: float = 5.0, retry: float = 1.0) -> None:
        """Receive other processes' announcements until cancelled (PostgreSQL only).

        A lost connection is noticed by asyncpg's termination callback or by the periodic
        check query; after every reconnection every cache is dropped (announcements may
        have been missed meanwhile).
        """
        if not self.postgres:
            return
        import asyncpg  # the PostgreSQL driver; not needed on SQLite

        while True:
            conn = None
            try:
                conn = await asyncpg.connect(asyncpg_dsn(self.database_url), timeout=10,
                                             server_settings={"application_name":
                                                              LISTENER_NAME})
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self.listening.set()
                if self.reconnects:
                    log.warning("announcement listener reconnected: dropping every cache")
                    await self.deliver([EVERYTHING])
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), check_interval)
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=check_interval)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("announcement listener lost its connection: %r", err)
            else:
                log.warning("announcement listener lost its connection")
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            self.reconnects += 1
            await asyncio.sleep(retry)

"""Applying announcements in this process: drop cached facts, re-check open connections.

Subscribed to the :class:`~orchestrator.announce.Announcer` by build_portal; runs for the
changes this process commits (right after the commit) and for those of other replicas
(as their notifications arrive). What each kind of change drops:

=============  ===================================  =====================================
change         caches dropped                       connections re-checked
=============  ===================================  =====================================
instance uid   its route (members, roles, secrets)  those to the instance
user id        the user's principal (roles)         the user's
session        the login session                    those opened with that login
token          the token's owner                    those opened with that token
presence uid   who is connected elsewhere           those to the instance
catalogue,     every cache                          all
everything
=============  ===================================  =====================================
"""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.announce import Change
from orchestrator.rotation import rotate_secrets
from web.auth import Authenticator
from web.credentials import resolve
from web.portal import Portal
from web.presence import Presence
from web.routes import PrincipalCache, RouteTable

log = logging.getLogger("atrium.revocation")


class Revocation:
    """The announcement receiver of one portal process."""

    def __init__(self, routes: RouteTable, principals: PrincipalCache, auth: Authenticator,
                 presence: Presence) -> None:
        self.routes = routes
        self.principals = principals
        self.auth = auth
        self.presence = presence
        self.applied = 0  # announcements applied (for tests and metrics)

    async def __call__(self, change: Change) -> None:
        self.applied += 1
        kind, key = change.kind, change.key
        if kind == "instance":
            self.routes.invalidate(key)
            await self.presence.revalidate(key)
        elif kind == "user" and key.isdigit():
            user_id = int(key)
            self.principals.invalidate(user_id)
            await self.presence.revalidate_where(lambda c: c.user_id == user_id)
        elif kind == "session":
            self.auth.forget(key)
            await self.presence.revalidate_where(lambda c: c.session == key)
        elif kind == "token":
            self.auth.tokens.invalidate(key)
            await self.presence.revalidate_where(lambda c: c.token == key)
        elif kind == "presence":
            self.presence.forget_remote(key)
            await self.presence.revalidate(key)
        elif kind in ("catalogue", "everything"):
            self.drop_all()
            await self.presence.revalidate_all()

    def drop_all(self) -> None:
        self.routes.clear()
        self.principals.clear()
        self.auth.tokens.clear()
        self.auth.sessions.clear()
        self.presence.forget_remote()


def connect_revocation(portal: Portal, replica: str = "") -> Revocation:
    """Wire a portal's announcements to its caches and open connections."""
    receiver = Revocation(portal.routes, portal.principals, portal.auth, portal.presence)
    assert portal.announcer is not None
    portal.announcer.subscribe(receiver)
    portal.presence.attach(portal.db, portal.announcer, portal.routes.get,
                           lambda credential: resolve(portal.auth, credential), replica)
    return receiver


async def rotate_exposed_secrets(portal: Portal, uid: str) -> str:
    """A member who could read the instance's secrets lost that access: rotate them."""
    async def commit(session: AsyncSession, key: str) -> None:
        await portal.commit(session, Change("instance", key))

    async with portal.db.session() as s:
        outcome = await rotate_secrets(s, portal.reconciler.backends, uid, commit)
    log.info("secrets of %s after a member lost access: %s", uid, outcome)
    return outcome

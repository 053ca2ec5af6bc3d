"""The portal's long-lived parts, created once per process and shared by every handler."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
from sqlalchemy.ext.asyncio import AsyncSession

from orchestrator.announce import Announcer, Change
from orchestrator.db import Database
from orchestrator.lifetime import LifetimeService
from orchestrator.reconciler import Reconciler
from orchestrator.schema_check import SchemaCheck
from orchestrator.settings import Settings
from web.auth import Authenticator
from web.limits import Bounds
from web.oidc_client import OidcClient
from web.origins import Origins
from web.presence import Presence
from web.routes import PrincipalCache, RouteTable


@dataclass
class Portal:
    settings: Settings
    db: Database
    reconciler: Reconciler
    routes: RouteTable
    principals: PrincipalCache
    auth: Authenticator
    templates: jinja2.Environment
    origins: Origins
    oidc: OidcClient | None = None  # OpenID Connect login, when configured
    # uid -> time of the last user input (desktop) or request (JupyterLab); flushed in
    # batches by the lifetime rules rather than written per event.
    activity: dict[str, float] = field(default_factory=dict)
    presence: Presence = field(default_factory=Presence)
    # Lifetime jobs and rules (orchestrator/lifetime.py); set by build_portal.
    lifetime: LifetimeService | None = None
    # Scheduled job -> runs finished in this process (the scheduler's counter; /healthz).
    job_runs: Mapping[str, int] = field(default_factory=dict)
    # Open connections per user and requests in flight per instance (web/limits.py).
    bounds: Bounds = field(init=False)
    # Changes that affect authorization, to every process (orchestrator/announce.py).
    announcer: Announcer | None = None
    # Set on SIGTERM: /readyz fails from then on (web/shutdown.py).
    draining: bool = False
    # Whether the schema is behind the code (web/health.py); set by build_portal.
    schema: SchemaCheck | None = None
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.bounds = Bounds(self.settings.limits)

    async def commit(self, session: AsyncSession, *changes: Change, kick: str = "") -> None:
        """The one way handlers commit: commit ``session`` and announce ``changes`` with it
        (caches dropped and open connections re-checked, here at once and on every
        replica), then kick the reconciler for instance ``kick``."""
        if self.announcer is not None:
            await self.announcer.commit(session, *changes)
        else:
            await session.commit()
            for change in changes:
                if change.kind == "instance":
                    self.routes.invalidate(change.key)
        if kick:
            self.reconciler.kick(kick)

    async def announce(self, *changes: Change) -> None:
        """Announce changes committed already (prefer :meth:`commit`)."""
        if self.announcer is not None:
            await self.announcer.announce(changes)

    async def revalidate(self, uid: str) -> None:
        """Membership of ``uid`` changed (committed): tell every process, re-check now."""
        self.routes.invalidate(uid)
        await self.announce(Change("instance", uid))

    def changed(self, uid: str) -> None:
        """An instance changed (committed): drop its cached route here at once and announce
        the change to every process in the background."""
        self.routes.invalidate(uid)
        self._announce_soon(Change("instance", uid))

    def changed_user(self, user_id: int) -> None:
        """A user's roles changed (committed): as :meth:`changed`, for the user."""
        self.principals.invalidate(user_id)
        self._announce_soon(Change("user", str(user_id)))

    def _announce_soon(self, change: Change) -> None:
        if self.announcer is None:
            return
        task = asyncio.get_running_loop().create_task(self._announce_logged(change))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce_logged(self, change: Change) -> None:
        try:
            await self.announce(change)
        except Exception:
            logging.getLogger("atrium.announce").exception("announcing %s failed", change)

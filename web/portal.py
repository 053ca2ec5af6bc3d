"""The portal's long-lived parts, created once per process and shared by every handler."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import jinja2

from orchestrator.db import Database
from orchestrator.lifetime import LifetimeService
from orchestrator.reconciler import Reconciler
from orchestrator.settings import Settings
from web.auth import Authenticator
from web.oidc_client import OidcClient
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
    oidc: OidcClient | None = None  # OpenID Connect login, when configured
    # uid -> time of the last user input (desktop) or request (JupyterLab); flushed in
    # batches by the lifetime rules rather than written per event.
    activity: dict[str, float] = field(default_factory=dict)
    presence: Presence = field(default_factory=Presence)
    # Lifetime jobs and rules (orchestrator/lifetime.py); set by build_portal.
    lifetime: LifetimeService | None = None
    # Scheduled job -> runs finished in this process (the scheduler's counter; /healthz).
    job_runs: Mapping[str, int] = field(default_factory=dict)

    async def revalidate(self, uid: str) -> None:
        """Membership of ``uid`` changed here: re-check its open connections now."""
        self.routes.invalidate(uid)
        await self.presence.revalidate(uid, self.routes.get)

    def changed(self, uid: str) -> None:
        """An instance changed in this process: drop its cached route."""
        self.routes.invalidate(uid)

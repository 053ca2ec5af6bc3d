"""The portal's long-lived parts, created once per process and shared by every handler."""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

from orchestrator.db import Database
from orchestrator.lifetime import LifetimeService
from orchestrator.reconciler import Reconciler
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
    # Open connections per user and requests in flight per instance (web/limits.py).
    bounds: Bounds = field(init=False)

    def __post_init__(self) -> None:
        self.bounds = Bounds(self.settings.limits)

    async def revalidate(self, uid: str) -> None:
        """Membership of ``uid`` changed here: re-check its open connections now."""
        self.routes.invalidate(uid)
        await self.presence.revalidate(uid, self.routes.get)

    def changed(self, uid: str) -> None:
        """An instance changed in this process: drop its cached route."""
        self.routes.invalidate(uid)

"""The portal's long-lived parts, created once per process and shared by every handler."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

from orchestrator.db import Database
from orchestrator.reconciler import Reconciler
from orchestrator.settings import Settings
from web.auth import Authenticator
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

    def changed(self, uid: str) -> None:
        """An instance changed in this process: drop its cached route."""
        self.routes.invalidate(uid)

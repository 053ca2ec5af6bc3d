"""Whether the database schema is behind this code, for the readiness probe (web/health.py).

Behind: the database is at a revision this code knows that is not its head (``atrium db
upgrade`` has not run). A revision this code does not know is *ahead* (a newer release's
pre-upgrade migration ran while this pod still serves): not behind, since migrations are
written to be compatible with the release before them.
"""

from __future__ import annotations

import time

from alembic.config import Config
from alembic.script import ScriptDirectory

from orchestrator.db import MIGRATIONS, Database

SCHEMA_TTL = 5.0  # seconds a schema verdict is reused (probes come every few seconds)


def known_revisions() -> set[str]:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}


class SchemaCheck:
    """Caches whether the schema is behind the code (``reason()``: "" when it is not)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._known = known_revisions()
        self._verdict = ""
        self._checked = -SCHEMA_TTL

    async def reason(self) -> str:
        if time.monotonic() - self._checked < SCHEMA_TTL:
            return self._verdict
        current, head = await self.db.revisions()
        behind = current != head and (not current or set(current.split(",")) <= self._known)
        self._verdict = (f"the database schema is at {current or 'none'}, this code needs "
                         f"{head}: run `atrium db upgrade`") if behind else ""
        self._checked = time.monotonic()
        return self._verdict

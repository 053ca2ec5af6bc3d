"""Probes: ``/healthz`` (liveness, in pages.py: the process answers and reaches its database)
and ``/readyz`` (readiness: this process should get new traffic).

Ready means: not draining (SIGTERM received, see :mod:`web.shutdown`) and the database schema
is not behind this code. A schema *ahead* of the code (an unknown revision: a newer release's
pre-upgrade migration ran) keeps old pods ready during a rolling upgrade, since migrations are
written to be compatible with the release before them; a known older revision means
``atrium db upgrade`` has not run, and the pod stays out of the Service until it has.
"""

from __future__ import annotations

from web.base import BaseHandler


class ReadyHandler(BaseHandler):
    async def prepare(self) -> None:
        pass  # probes carry no credentials

    async def get(self) -> None:
        reason = "draining: shutting down" if self.portal.draining else ""
        if not reason and self.portal.schema is not None:
            try:
                reason = await self.portal.schema.reason()
            except Exception as err:  # the database does not answer: not ready either
                reason = f"the database does not answer: {err.__class__.__name__}"
        if reason:
            self.set_status(503)
            self.finish({"status": "not ready", "reason": reason})
        else:
            self.finish({"status": "ready"})

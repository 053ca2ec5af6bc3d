"""``/metrics`` on a port of its own (ATRIUM_METRICS_PORT), in the Prometheus text format.

A separate listener rather than a route of the portal: the ingress publishes the portal's
port only, so the metrics (which name plans and counts users' launches) are reachable inside
the cluster (the ServiceMonitor, or a scrape annotation) and nowhere else. With
ATRIUM_METRICS_TOKEN set, scrapes must also send ``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hmac
import logging

import tornado.web
from tornado.httpserver import HTTPServer

from orchestrator import metrics
from orchestrator.db import Database
from orchestrator.settings import Settings

log = logging.getLogger("atrium.metrics")


class MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, db: Database, token: str) -> None:
        self.db = db
        self.token = token

    async def get(self) -> None:
        if self.token:
            sent = self.request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {self.token}".encode()):
                self.set_status(401)
                self.set_header("WWW-Authenticate", "Bearer")
                self.finish({"error": {"status": 401, "message": "metrics need a bearer token"}})
                return
        try:
            await metrics.refresh_instances(self.db)
        except Exception as err:  # still serve the process's own counters
            log.warning("counting instances for /metrics failed: %r", err)
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(metrics.exposition())


def start_metrics_server(settings: Settings, db: Database) -> HTTPServer | None:
    """Listen on ATRIUM_METRICS_PORT (None when it is 0: metrics off)."""
    if not settings.metrics_port:
        return None
    app = tornado.web.Application([(r"/metrics", MetricsHandler,
                                    {"db": db, "token": settings.metrics_token})])
    server = HTTPServer(app, xheaders=False)
    server.listen(settings.metrics_port, settings.host)
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    return server

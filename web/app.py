"""The Tornado application: routes, settings and the serve loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import jinja2
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import Resolver
from tornado.routing import Rule

from orchestrator.db import Database
from orchestrator.experiments_sync import periodic_sync
from orchestrator.lifetime import LifetimeService
from orchestrator.lifetime_policy import LifetimePolicy
from orchestrator.notify import Mailer
from orchestrator.reconciler import Reconciler
from orchestrator.scheduler import JobScheduler, leader_name, portal_jobs
from orchestrator.settings import Settings
from spawners.registry import make_backends
from web import oidc, pages
from web.admin_api import ADMIN_API_ROUTES
from web.admin_pages import ADMIN_PAGE_ROUTES
from web.api import API_ROUTES
from web.auth import Authenticator
from web.base import NotFoundApi
from web.desktop import DesktopBridge, DesktopPage, KeyboardHandler, novnc_dir
from web.lifetime_api import LIFETIME_API_ROUTES
from web.lifetime_pages import LIFETIME_PAGE_ROUTES
from web.oidc_client import OidcClient
from web.portal import Portal
from web.proxy import IsWebSocket, LabProxyHandler, LabWebSocketProxy
from web.resolver import IPLiteralResolver
from web.routes import PrincipalCache, RouteTable
from web.sharing_api import SHARING_ROUTES
from web.sharing_pages import SHARING_PAGES
from web.tokens import TOKEN_ROUTES

HERE = Path(__file__).parent
log = logging.getLogger("atrium")

UID = r"([0-9a-f]{1,32})"


def make_app(portal: Portal) -> tornado.web.Application:
    handlers: list = [
        Rule(IsWebSocket(rf"/instances/{UID}/lab/(.*)"), LabWebSocketProxy),
        (rf"/instances/{UID}/lab/(.*)", LabProxyHandler),
        (rf"/instances/{UID}/lab", pages.LabSlashRedirect),
        Rule(IsWebSocket(rf"/instances/{UID}/desktop/websockify"), DesktopBridge),
        (rf"/instances/{UID}/desktop", DesktopPage),
        (rf"/instances/{UID}", pages.InstancePage),
        (r"/", pages.DashboardHandler),
        (r"/login", pages.LoginHandler),
        (r"/logout", pages.LogoutHandler),
        (r"/logout/done", oidc.LoggedOutHandler),
        (r"/login/oidc", oidc.OidcStartHandler),
        (r"/login/oidc/callback", oidc.OidcCallbackHandler),
        (r"/login/oidc/backchannel-logout", oidc.BackchannelLogoutHandler),
        (r"/healthz", pages.HealthHandler),
        (rf"/api/v1/instances/{UID}/keyboard", KeyboardHandler),
        *LIFETIME_API_ROUTES,
        *LIFETIME_PAGE_ROUTES,
        *SHARING_ROUTES,
        *SHARING_PAGES,
        *API_ROUTES,
        *TOKEN_ROUTES,
        *ADMIN_API_ROUTES,
        *ADMIN_PAGE_ROUTES,
        *([(r"/novnc/(.*)", tornado.web.StaticFileHandler, {"path": str(novnc_dir())})]
          if novnc_dir() else []),
        (r"/api/.*", NotFoundApi),
    ]
    return tornado.web.Application(
        handlers,
        portal=portal,
        cookie_secret=portal.settings.cookie_secret,
        xsrf_cookies=True,
        cross_origin_protection=True,
        xsrf_cookie_kwargs={"samesite": "Lax", "secure": portal.settings.secure_cookies},
        login_url="/login",
        static_path=str(HERE / "static"),
        websocket_max_message_size=256 * 1024 * 1024,
        websocket_ping_interval=30,
    )


def make_templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


async def build_portal(settings: Settings, db: Database) -> Portal:
    routes = RouteTable(db)
    principals = PrincipalCache(db)
    backends = make_backends(settings)
    reconciler = Reconciler(db, backends, interval=settings.reconcile_interval,
                            start_timeout=settings.start_timeout, on_change=routes.invalidate)
    portal = Portal(settings=settings, db=db, reconciler=reconciler, routes=routes,
                    principals=principals,
                    auth=Authenticator(db, principals, settings=settings),
                    templates=make_templates(),
                    oidc=OidcClient(settings) if settings.oidc_enabled else None)
    if portal.oidc is not None:
        portal.auth.provider_check = oidc.provider_check(portal, portal.oidc)

    def deleting(uid: str) -> None:  # an expired instance: delete it now
        portal.changed(uid)
        reconciler.kick(uid)

    portal.lifetime = LifetimeService(db, LifetimePolicy.from_settings(settings),
                                      Mailer(settings), public_url=settings.public_url,
                                      activity=portal.activity, on_delete=deleting)
    return portal


async def serve(settings: Settings) -> None:
    """Run the portal until SIGINT/SIGTERM. Sessions keep running when it stops."""
    settings.check_for_serving()
    # The proxy streams bodies of any size (Tornado's client would refuse > 100 MiB).
    AsyncHTTPClient.configure(None, max_clients=1000, max_body_size=2**62)
    Resolver.configure(IPLiteralResolver)
    db = Database(settings.database_url)
    await db.check_schema()
    portal = await build_portal(settings, db)
    app = make_app(portal)
    server = HTTPServer(app, xheaders=False, max_body_size=10 * 1024**3)
    server.listen(settings.port, settings.host)
    # The reconcile sweep, expiry and warnings run in the scheduler leader only (one process
    # per database); every process flushes the activity it saw.
    assert portal.lifetime is not None
    scheduler = JobScheduler(db, portal_jobs(settings, portal.reconciler, portal.lifetime),
                             holder=leader_name(settings.host, settings.port),
                             lease=settings.leader_lease)
    scheduler.start()
    # Revocation and the owner's absence reach open connections within seconds.
    presence_task = asyncio.get_running_loop().create_task(
        portal.presence.watch(portal.routes.get))
    # Deprovisioning at the provider reaches idle users and API tokens too.
    sweep_task = asyncio.get_running_loop().create_task(oidc.provider_sweep(portal))
    sync_task = None
    if settings.experiments_sync_interval > 0:
        sync_task = asyncio.get_running_loop().create_task(periodic_sync(settings, db))
    log.info("Atrium listening on %s (backends: %s)", settings.public_url,
             ", ".join(settings.backends))
    if settings.demo_mode:
        log.warning("DEMO MODE is on (ATRIUM_DEMO_MODE): anyone who reaches %s can log in "
                    "as any user without a password. Never use it in production.",
                    settings.public_url)
    if not settings.demo_mode and not settings.oidc_enabled:
        log.warning("no login method: set ATRIUM_OIDC_ISSUER (only API tokens work now)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    server.stop()
    presence_task.cancel()
    sweep_task.cancel()
    if sync_task:
        sync_task.cancel()
    await scheduler.stop()
    try:
        await portal.lifetime.flush_activity()
    except Exception:
        log.exception("flushing the last activity failed")
    await portal.reconciler.stop()
    for backend in portal.reconciler.backends.values():
        await backend.close()
    await db.close()

"""The Tornado application: routes, settings and the serve loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import jinja2
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import Resolver
from tornado.routing import AnyMatches, Matcher, PathMatches, Rule

from orchestrator import metrics
from orchestrator.announce import Announcer
from orchestrator.db import Database
from orchestrator.experiments_sync import periodic_sync
from orchestrator.filemodes import secure_state_dir
from orchestrator.lifetime import LifetimeService
from orchestrator.lifetime_policy import LifetimePolicy
from orchestrator.notify import Mailer
from orchestrator.reconciler import Reconciler
from orchestrator.scheduler import JobScheduler, leader_name, portal_jobs
from orchestrator.schema_check import SchemaCheck
from orchestrator.settings import Settings
from spawners.registry import make_backends
from web import bodylimit, oidc, pages
from web.admin_api import ADMIN_API_ROUTES
from web.admin_pages import ADMIN_PAGE_ROUTES
from web.api import API_ROUTES
from web.auth import Authenticator
from web.base import NotFoundApi, NotFoundPage
from web.desktop import DesktopBridge, DesktopPage, KeyboardHandler, novnc_dir
from web.headers import StaticFiles
from web.health import ReadyHandler
from web.lifetime_api import LIFETIME_API_ROUTES
from web.lifetime_pages import LIFETIME_PAGE_ROUTES
from web.metrics import start_metrics_server
from web.oidc_client import OidcClient
from web.origins import Origins, PortalHost, SessionHost, SessionPath
from web.portal import Portal
from web.proxy import IsWebSocket, LabProxyHandler, LabWebSocketProxy
from web.resolver import IPLiteralResolver
from web.revocation import connect_revocation
from web.routes import PrincipalCache, RouteTable
from web.sharing_api import SHARING_ROUTES
from web.sharing_pages import SHARING_PAGES
from web.shutdown import drain
from web.tickets import (
    EnterHandler,
    ScriptOnly,
    SessionKeyboard,
    SessionNotFound,
    TicketHandler,
    ToSessionHost,
    UnknownHost,
)
from web.tokens import TOKEN_ROUTES

HERE = Path(__file__).parent
log = logging.getLogger("atrium")

UID = r"([0-9a-f]{1,32})"


SESSION_PATHS: list[tuple[str, bool | None, type]] = [  # (pattern, WebSocket?, handler)
    (rf"/instances/{UID}/lab/(.*)", True, LabWebSocketProxy),
    (rf"/instances/{UID}/lab/(.*)", False, LabProxyHandler),
    (rf"/instances/{UID}/lab", None, pages.LabSlashRedirect),
    (rf"/instances/{UID}/desktop/websockify", True, DesktopBridge),
    (rf"/instances/{UID}/desktop", None, DesktopPage),
]


def session_paths_on_portal(origins: Origins) -> list[Rule]:
    """The lab and desktop on the portal's host: all of it in ``path`` mode; in
    ``subdomain`` mode scripts with an API token only, browsers go to the instance's host."""
    rules = []
    for pattern, websocket, handler in SESSION_PATHS:
        matcher: Matcher = IsWebSocket(pattern) if websocket else PathMatches(pattern)
        rules.append(Rule(ScriptOnly(matcher) if origins.subdomains else matcher, handler))
    if origins.subdomains:
        rules.append(Rule(PathMatches(rf"/instances/{UID}/(?:lab|desktop)(?:/.*)?"),
                          ToSessionHost))
    return rules


def session_host_rules(origins: Origins) -> list[Rule]:
    """What an instance's own host serves: its lab, desktop and ticket redemption."""
    static = [(r"/static/(.*)", StaticFiles, {"path": str(HERE / "static")})]
    if novnc_dir():
        static.append((r"/novnc/(.*)", StaticFiles, {"path": str(novnc_dir())}))
    return [
        *(Rule(SessionPath(origins, pattern, websocket), handler)
          for pattern, websocket, handler in SESSION_PATHS),
        Rule(SessionPath(origins, rf"/instances/{UID}/desktop/keyboard"), SessionKeyboard),
        Rule(SessionPath(origins, rf"/instances/{UID}/ticket"), TicketHandler),
        *(Rule(PathMatches(pattern), handler, kwargs) for pattern, handler, kwargs in static),
        Rule(PathMatches(r".*"), SessionNotFound),
    ]


def make_app(portal: Portal) -> tornado.web.Application:
    origins = portal.origins
    handlers: list = [
        *session_paths_on_portal(origins),
        (rf"/instances/{UID}/enter", EnterHandler),
        (rf"/instances/{UID}", pages.InstancePage),
        (r"/", pages.DashboardHandler),
        (r"/login", pages.LoginHandler),
        (r"/logout", pages.LogoutHandler),
        (r"/logout/done", oidc.LoggedOutHandler),
        (r"/login/oidc", oidc.OidcStartHandler),
        (r"/login/oidc/callback", oidc.OidcCallbackHandler),
        (r"/login/oidc/backchannel-logout", oidc.BackchannelLogoutHandler),
        (r"/healthz", pages.HealthHandler),
        (r"/readyz", ReadyHandler),
        (rf"/api/v1/instances/{UID}/keyboard", KeyboardHandler),
        *LIFETIME_API_ROUTES,
        *LIFETIME_PAGE_ROUTES,
        *SHARING_ROUTES,
        *SHARING_PAGES,
        *API_ROUTES,
        *TOKEN_ROUTES,
        *ADMIN_API_ROUTES,
        *ADMIN_PAGE_ROUTES,
        *([(r"/novnc/(.*)", StaticFiles, {"path": str(novnc_dir())})] if novnc_dir() else []),
        (r"/api/.*", NotFoundApi),
        (r".*", NotFoundPage),
    ]
    app = tornado.web.Application(
        handlers,
        portal=portal,
        static_handler_class=StaticFiles,
        cookie_secret=portal.settings.cookie_secret,
        xsrf_cookies=True,
        cross_origin_protection=True,
        xsrf_cookie_kwargs={"samesite": "Lax", "secure": portal.settings.secure_cookies},
        login_url="/login",
        static_path=str(HERE / "static"),
        # The portal's own sockets (the desktop bridge); the lab relay sets its own.
        websocket_max_message_size=portal.settings.limits.ws_max_message,
        websocket_ping_interval=30,
    )
    # By host: an instance's own host, the portal's names, anything else refused (only the
    # health check answers there, for probes that address the server by any name).
    router = app.default_router
    router.rules = [router.process_rule(rule) for rule in (
        Rule(SessionHost(origins), session_host_rules(origins)),
        Rule(PortalHost(origins), app.wildcard_router),
        Rule(AnyMatches(), [(r"/healthz", pages.HealthHandler), (r".*", UnknownHost)]),
    )]
    return app


def make_templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


async def build_portal(settings: Settings, db: Database) -> Portal:
    routes = RouteTable(db, ttl=settings.cache_ttl)
    principals = PrincipalCache(db, ttl=settings.cache_ttl)
    backends = make_backends(settings)
    reconciler = Reconciler(db, backends, interval=settings.reconcile_interval,
                            start_timeout=settings.start_timeout,
                            on_change=lambda uid: portal.changed(uid))
    portal = Portal(settings=settings, db=db, reconciler=reconciler, routes=routes,
                    principals=principals,
                    auth=Authenticator(db, principals, token_ttl=settings.cache_ttl,
                                       settings=settings, session_ttl=settings.cache_ttl),
                    templates=make_templates(), origins=Origins.from_settings(settings),
                    oidc=OidcClient(settings) if settings.oidc_enabled else None,
                    announcer=Announcer(db),
                    schema=SchemaCheck(db))
    portal.auth.announcer = portal.announcer
    connect_revocation(portal, replica=leader_name(settings.host, settings.port))
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
    secure_state_dir(settings.state_dir, settings.database_url)
    # The proxy streams bodies of any size (Tornado's client would refuse > 100 MiB); each
    # instance gets a share of the clients (web/limits.py InstanceSlots).
    AsyncHTTPClient.configure(None, max_clients=settings.limits.upstream_connections,
                              max_body_size=2**62)
    Resolver.configure(IPLiteralResolver)
    db = Database(settings.database_url)
    await db.check_schema()
    portal = await build_portal(settings, db)
    app = make_app(portal)
    server = bodylimit.make_server(app, settings.limits)
    server.listen(settings.port, settings.host)
    metrics_server = start_metrics_server(settings, db)
    # The reconcile sweep, expiry and warnings run in the scheduler leader only (one process
    # per database); every process flushes the activity it saw.
    assert portal.lifetime is not None
    scheduler = JobScheduler(db, portal_jobs(settings, portal.reconciler, portal.lifetime),
                             holder=leader_name(settings.host, settings.port),
                             lease=settings.leader_lease)
    portal.job_runs = scheduler.completed
    scheduler.start()
    metrics.track_leader(lambda: scheduler.is_leader)
    # Revocation reaches open connections at once (announcements) and, as a safety net and
    # for the owner's absence, within seconds.
    presence_task = asyncio.get_running_loop().create_task(portal.presence.watch())
    assert portal.announcer is not None
    listen_task = asyncio.get_running_loop().create_task(portal.announcer.listen())
    # Deprovisioning at the provider reaches idle users and API tokens too.
    sweep_task = asyncio.get_running_loop().create_task(oidc.provider_sweep(portal))
    sync_task = None
    if settings.experiments_sync_interval > 0:
        sync_task = asyncio.get_running_loop().create_task(periodic_sync(settings, db))
    log.info("Atrium listening on %s (backends: %s)", settings.public_url,
             ", ".join(settings.backends))
    if "fake" in settings.backends:
        log.warning("the FAKE backend is on (ATRIUM_BACKENDS): its instances run nothing; "
                    "it exists for benchmarks and tests only")
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
    await drain(portal, server, settings.shutdown_grace, settings.shutdown_drain)
    if metrics_server is not None:
        metrics_server.stop()
    presence_task.cancel()
    sweep_task.cancel()
    listen_task.cancel()
    try:
        await portal.presence.stop()
    except Exception:
        log.exception("removing this process's connection rows failed")
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

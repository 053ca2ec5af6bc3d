"""Who is calling: a login-session cookie (browsers) or a bearer API token (scripts).

Both resolve from memory in the common case, so the proxy costs no database query per
request: token owners and login sessions are cached for a few seconds (other replicas see a
revocation within that time; this process at once, as it drops its cache entry).

The session cookie (``atrium_session``) is signed, HttpOnly, SameSite=Lax and Secure when
Atrium is served over https; it holds a random id whose SHA-256 names a row of
``login_sessions``. A login ends at logout, at revocation, after the session lifetime,
after the idle timeout, when demo mode is switched off (for demo logins), and when the
identity provider says its own session has ended (checked every recheck interval).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from tornado.web import RequestHandler

from orchestrator import logins, metrics
from orchestrator.announce import Announcer, Change
from orchestrator.db import Database
from orchestrator.logins import SessionSnapshot, hash_session_id
from orchestrator.models import LoginSession
from orchestrator.settings import Settings
from orchestrator.tokens import hash_token, user_id_for_token
from sharing.policy import Principal
from web.routes import PrincipalCache, TtlCache

SESSION_COOKIE = "atrium_session"
log = logging.getLogger("atrium.auth")

# digest of a login session -> does its provider session still live? (see web/oidc.py)
ProviderCheck = Callable[[str], Coroutine[Any, Any, bool]]


def bearer_token(handler: RequestHandler) -> str | None:
    scheme, _, value = handler.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


class Authenticator:
    """Resolves a request to a :class:`Principal`; starts and ends login sessions."""

    def __init__(self, db: Database, principals: PrincipalCache, token_ttl: float = 10.0,
                 settings: Settings | None = None, session_ttl: float = 10.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock  # epoch seconds; tests script it to cross idle and lifetime limits
        self.principals = principals
        self.tokens: TtlCache[str, int | None] = TtlCache(self._token_owner, token_ttl)
        self.sessions: TtlCache[str, SessionSnapshot | None] = TtlCache(self._session,
                                                                        session_ttl)
        self.lifetime = settings.session_lifetime if settings else 7 * 86400.0
        self.idle_timeout = settings.session_idle_timeout if settings else 86400.0
        self.demo_mode = settings.demo_mode if settings else False
        self.recheck_interval = settings.oidc_recheck_interval if settings else 0.0
        self.secure_cookies = settings.secure_cookies if settings else False
        # Tokens made before every token expired live ATRIUM_TOKEN_MAX_DAYS at most.
        self.token_max_age = dt.timedelta(days=settings.token_max_days) if settings else None
        # Activity is written at most this often per session (not once per request).
        self.touch_interval = min(60.0, self.idle_timeout / 10)
        self.provider_check: ProviderCheck | None = None
        # Tells every process that a login ended (set by build_portal).
        self.announcer: Announcer | None = None
        self._activity: dict[str, float] = {}  # digest -> last request seen here
        self._written: dict[str, float] = {}  # digest -> last activity written
        self._checked: dict[str, float] = {}  # digest -> last provider check from here
        self._checks: dict[str, asyncio.Task[bool]] = {}
        self._background: set[asyncio.Task[Any]] = set()

    async def _token_owner(self, digest: str) -> int | None:
        async with self.db.session() as s:
            return await user_id_for_token(s, digest, self.token_max_age)

    async def _session(self, digest: str) -> SessionSnapshot | None:
        async with self.db.session() as s:
            return await logins.snapshot(s, digest)

    async def principal(self, handler: RequestHandler) -> Principal | None:
        token = bearer_token(handler)
        if token is not None:
            user_id = await self.tokens.get(hash_token(token))
            if user_id is None:
                metrics.LOGIN_FAILURES.labels("token").inc()
        else:
            digest = self.session_digest(handler)
            user_id = await self.session_user(digest) if digest else None
        if user_id is None:
            return None
        return await self.principals.get(user_id)

    def session_digest(self, handler: RequestHandler) -> str | None:
        """The digest of the login session the request's cookie names, if it is signed."""
        raw = handler.get_signed_cookie(SESSION_COOKIE, max_age_days=self.lifetime / 86400 + 1)
        return hash_session_id(raw.decode("ascii", "replace")) if raw else None

    async def session_user(self, digest: str) -> int | None:
        """The user of a live login session, else None (see the module's rules)."""
        snap = await self.sessions.get(digest)
        if snap is None or snap.revoked:
            return None
        now = self.clock()
        if now >= snap.expires_at or (snap.method == "demo" and not self.demo_mode):
            return None
        if now - max(snap.last_seen_at, self._activity.get(digest, 0.0)) > self.idle_timeout:
            return None
        self._activity[digest] = now
        if now - max(snap.last_seen_at, self._written.get(digest, 0.0)) > self.touch_interval:
            self._written[digest] = now
            self._spawn(self._touch(digest, now))
        if (snap.method == "oidc" and snap.has_refresh_token and self.provider_check
                and self.recheck_interval > 0):
            checked = max(snap.provider_checked_at, self._checked.get(digest, 0.0))
            if now - checked >= self.recheck_interval and not await self._check(digest):
                return None
        return snap.user_id

    async def _check(self, digest: str) -> bool:
        """Ask the provider (once for concurrent requests) whether its session lives."""
        assert self.provider_check is not None
        task = self._checks.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(self.provider_check(digest))
            self._checks[digest] = task
            task.add_done_callback(lambda _: self._checks.pop(digest, None))
        alive = await asyncio.shield(task)
        self._checked[digest] = self.clock()
        if not alive:
            self.forget(digest)
        return alive

    async def _touch(self, digest: str, when: float) -> None:
        async with self.db.session() as s:
            await logins.touch(s, digest, dt.datetime.fromtimestamp(when, dt.UTC)
                               .replace(tzinfo=None))
            await s.commit()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception:  # a failed activity write must not fail a request
                log.exception("recording session activity failed")

        task = asyncio.get_running_loop().create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if len(self._activity) > 10_000:
            self._prune()

    def _prune(self) -> None:
        horizon = self.clock() - self.idle_timeout
        for table in (self._activity, self._written, self._checked):
            for digest in [d for d, t in table.items() if t < horizon]:
                table.pop(digest, None)

    def forget(self, digest: str) -> None:
        """Drop what this process remembers of a login session (after revoking it)."""
        self.sessions.invalidate(digest)
        for table in (self._activity, self._written, self._checked):
            table.pop(digest, None)

    # --- logging in and out ---------------------------------------------------------------

    async def start_session(self, handler: RequestHandler, user_id: int, method: str,
                            **provider: str) -> None:
        """Record a login and set the cookie; a session the browser already had ends.

        A new id at every login: a session id planted before login is worth nothing after.
        """
        previous = self.session_digest(handler)
        async with self.db.session() as s:
            if previous:
                await logins.revoke(s, previous)
            session_id = await logins.create_session(
                s, user_id, method, dt.timedelta(seconds=self.lifetime),
                user_agent=handler.request.headers.get("User-Agent", ""), **provider)
            await self.commit(s, *([Change("session", previous)] if previous else []))
        if previous:
            self.forget(previous)
        handler.set_signed_cookie(
            SESSION_COOKIE, session_id, expires_days=self.lifetime / 86400, httponly=True,
            samesite="Lax", secure=self.secure_cookies or handler.request.protocol == "https")
        self.principals.invalidate(user_id)

    async def end_session(self, handler: RequestHandler) -> LoginSession | None:
        """Revoke the request's login session and clear the cookie; returns the row."""
        digest = self.session_digest(handler)
        handler.clear_cookie(SESSION_COOKIE)
        if digest is None:
            return None
        async with self.db.session() as s:
            row = await logins.revoke(s, digest)
            await self.commit(s, Change("session", digest))
        self.forget(digest)
        return row

    async def commit(self, session: AsyncSession, *changes: Change) -> None:
        """Commit and announce (open connections of an ended login close everywhere)."""
        if self.announcer is not None:
            await self.announcer.commit(session, *changes)
        else:
            await session.commit()

    def revoke(self, token: str) -> None:
        self.tokens.invalidate(hash_token(token))

    def revoke_digest(self, digest: str) -> None:
        """A token was revoked (by its stored hash): forget its owner at once."""
        self.tokens.invalidate(digest)

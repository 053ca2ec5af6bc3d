"""Log in with OpenID Connect: the handlers, and the check that the provider session lives.

The flow (authorization code with PKCE):

1. ``GET /login/oidc?next=/path`` records a pending login (state, nonce, PKCE verifier) in
   the database, binds its state to this browser with a short-lived signed cookie, and
   sends the browser to the provider.
2. ``GET /login/oidc/callback?code&state`` checks the state against the cookie, consumes
   the pending login (a replayed answer finds nothing), exchanges the code, validates the
   ID token (web/oidc_core.py), reads userinfo, creates or updates the user and starts a
   login session. Every refusal is shown on the login page with what was wrong.
3. ``POST /logout`` (web/pages.py) ends the Atrium session and, for these logins, the
   provider's (end_session_endpoint), which sends the browser back to ``/logout/done``.
4. A provider session that ends elsewhere ends the Atrium logins it backs: at once when
   the provider calls ``POST /login/oidc/backchannel-logout``, else at the next request
   after the recheck interval (:func:`provider_check`, a refresh-token grant).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from typing import Any

from sqlalchemy import select

from orchestrator import logins, metrics
from orchestrator.announce import Change
from orchestrator.logins import IdentityConflict
from orchestrator.models import LoginSession, UserIdentity
from web.auth import ProviderCheck
from web.base import BaseHandler
from web.oidc_client import OidcClient, ProviderUnreachable, SessionEnded
from web.oidc_core import LoginRefused, authorization_url, claim
from web.pages import render_login, safe_next
from web.portal import Portal

log = logging.getLogger("atrium.oidc")
STATE_COOKIE = "atrium_oidc_state"
STATE_PATH = "/login/oidc"


class OidcHandler(BaseHandler):
    @property
    def oidc(self) -> OidcClient:
        client = self.portal.oidc
        if client is None:
            raise LoginRefused("OpenID Connect login is not configured (ATRIUM_OIDC_ISSUER)",
                               404)
        return client

    async def refuse(self, err: LoginRefused) -> None:
        log.warning("login refused (%s): %s", self.request.remote_ip, err.message)
        metrics.LOGIN_FAILURES.labels("oidc").inc()
        self.set_status(err.status)
        await render_login(self, error=f"Login refused: {err.message}.")


class OidcStartHandler(OidcHandler):
    async def get(self) -> None:
        try:
            meta = await self.oidc.metadata()
        except LoginRefused as err:
            await self.refuse(err)
            return
        async with self.portal.db.session() as s:
            pending = await logins.create_pending(s, safe_next(self.get_argument("next", "/")))
            await s.commit()
        self.set_signed_cookie(STATE_COOKIE, pending.state, path=STATE_PATH, httponly=True,
                               samesite="Lax", expires_days=logins.PENDING_TTL.seconds / 86400,
                               secure=self.portal.settings.secure_cookies)
        self.redirect(authorization_url(
            meta.authorization_endpoint, client_id=self.oidc.client_id,
            redirect_uri=self.oidc.redirect_uri, scopes=self.oidc.scopes,
            state=pending.state, nonce=pending.nonce, code_verifier=pending.code_verifier))


class OidcCallbackHandler(OidcHandler):
    async def get(self) -> None:
        try:
            await self._login()
        except LoginRefused as err:
            await self.refuse(err)

    async def _login(self) -> None:
        client = self.oidc
        bound = self.get_signed_cookie(STATE_COOKIE, max_age_days=1)
        self.clear_cookie(STATE_COOKIE, path=STATE_PATH)
        state = self.get_argument("state", "")
        error = self.get_argument("error", "")
        if error:
            # Still consume the pending login: its state must not be usable again.
            if state:
                async with self.portal.db.session() as s:
                    await logins.consume_pending(s, state)
            raise LoginRefused("the identity provider did not log you in: "
                               f"{self.get_argument('error_description', '') or error}", 400)
        if not state:
            raise LoginRefused("the provider's answer carries no state", 400)
        if bound is None or bound.decode("ascii", "replace") != state:
            raise LoginRefused("this login was not started in this browser, or took too long "
                               "(its cookie is gone): start again", 400)
        async with self.portal.db.session() as s:
            pending = await logins.consume_pending(s, state)
        if pending is None:
            raise LoginRefused("this login answer was already used or is too old (a replayed "
                               "state): start again", 400)
        meta = await client.metadata()
        iss = self.get_argument("iss", "")
        if iss and iss != meta.issuer:  # RFC 9207: the answer names who issued it
            raise LoginRefused(f"the answer comes from another issuer ({iss!r})")
        code = self.get_argument("code", "")
        if not code:
            raise LoginRefused("the provider's answer carries no authorization code", 400)
        tokens = await client.exchange_code(code, pending.code_verifier)
        access_token = tokens.get("access_token") if isinstance(
            tokens.get("access_token"), str) else None
        claims = await client.validate(tokens["id_token"], nonce=pending.nonce,
                                       access_token=access_token)
        userinfo = await client.userinfo(access_token or "", claims["sub"])
        # The ID token's claims are authoritative for who logged in; userinfo (fresher,
        # and where providers put profile claims) fills in the rest.
        identity = client.mapping.identity({**userinfo, **{
            k: v for k, v in claims.items() if k not in userinfo or k == "sub"}})
        try:
            async with self.portal.db.session() as s:
                user = await logins.upsert_user(
                    s, issuer=meta.issuer, subject=identity.subject, username=identity.username,
                    email=identity.email, name=identity.name, groups=identity.groups,
                    roles=identity.roles, managed_roles=client.mapping.managed_roles,
                    link_unclaimed=self.portal.settings.oidc_link_unclaimed)
                await s.commit()
                user_id = user.id
        except IdentityConflict as err:
            # The subject lets the administrator link the right account.
            raise LoginRefused(f"{err}. Your identity at the provider is {identity.subject!r}"
                               ) from None
        await self.portal.auth.start_session(
            self, user_id, "oidc", provider_sid=str(claims.get("sid") or ""),
            id_token=tokens["id_token"],
            refresh_token=str(tokens.get("refresh_token") or ""))
        log.info("login: %s (%s) roles=%s", identity.username, identity.subject,
                 ",".join(sorted(r.value for r in identity.roles)) or "-")
        self.redirect(pending.next_url)


class BackchannelLogoutHandler(OidcHandler):
    """OIDC Back-Channel Logout: the provider tells Atrium, server to server, that a
    session ended there (logout in another application, an admin's kill). The matching
    Atrium logins end at once in this process, within seconds in the others.

    Register ``PUBLIC_URL/login/oidc/backchannel-logout`` at the provider (with "session
    required" when it offers it). Without it, the periodic check still notices.
    """

    def check_xsrf_cookie(self) -> None:
        pass  # a server-to-server call, authenticated by the signed logout token

    async def prepare(self) -> None:
        pass  # no cookie, no principal

    async def post(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            claims = await self.oidc.validate_logout(self.get_body_argument("logout_token", ""))
        except LoginRefused as err:
            log.warning("back-channel logout refused: %s", err.message)
            self.set_status(400)
            self.finish({"error": "invalid_request", "error_description": err.message})
            return
        async with self.portal.db.session() as s:
            if claims.get("sid"):
                digests = await logins.revoke_by_provider_sid(s, str(claims["sid"]))
            else:
                digests = await logins.revoke_by_subject(s, self.oidc.issuer, str(claims["sub"]))
            await self.portal.commit(s, *(Change("session", d) for d in digests))
        for digest in digests:
            self.portal.auth.forget(digest)
        log.info("back-channel logout: %d login(s) ended (sid=%s)", len(digests),
                 claims.get("sid", "-"))
        self.set_status(200)
        self.finish()


class LoggedOutHandler(BaseHandler):
    """Where the provider sends the browser after ending its session."""

    async def get(self) -> None:
        await render_login(self, notice="You are logged out of Atrium and of your identity "
                                        "provider.")


def provider_check(portal: Portal, client: OidcClient) -> ProviderCheck:
    """The Authenticator's hook: does the provider session behind a login still live, and
    what does the provider say of the user now?

    Uses the refresh token (providers such as Keycloak tie it to their session). Returns
    False (after revoking the login) when the provider refuses it; True when it accepts,
    when another request or replica checked moments ago, or when the provider cannot be
    reached (a provider outage must not log everyone out; the lifetime still applies).

    Deprovisioning reaches Atrium here, not at the next login: a refusal worded as a
    disabled or deleted account (``ATRIUM_OIDC_DEPROVISIONED``) revokes every login and API
    token of the user and drops the roles the provider manages; an accepted refresh reads
    userinfo and makes the managed roles and groups follow it (an admin group removed there
    is ADMIN removed here).
    """
    interval = dt.timedelta(seconds=max(portal.settings.oidc_recheck_interval - 1, 0))
    deprovisioned = re.compile(portal.settings.oidc_deprovisioned)

    async def check(digest: str) -> bool:
        async with portal.db.session() as s:
            row = await logins.claim_provider_check(s, digest, interval)
            await s.commit()
            if row is None:
                portal.auth.sessions.invalidate(digest)  # see what the other checker saw
                return True
            refresh_token, user_id = row.refresh_token, row.user_id
        subject = await _subject(portal, user_id, client.issuer)
        try:
            tokens = await client.refresh(refresh_token, subject)
        except SessionEnded as err:
            if deprovisioned.search(str(err)):
                await _deprovision(portal, client, user_id, str(err))
                return False
            log.info("provider session ended for user %s: %s", user_id, err)
            async with portal.db.session() as s:
                await logins.revoke(s, digest)
                await portal.commit(s, Change("session", digest))
            return False
        except (ProviderUnreachable, LoginRefused) as err:
            log.warning("cannot check the provider session of user %s: %s", user_id,
                        err.message)
            return True
        async with portal.db.session() as s:
            row = await s.get(LoginSession, digest)
            if row is not None:
                row.refresh_token = str(tokens.get("refresh_token") or row.refresh_token)
                row.id_token = str(tokens.get("id_token") or row.id_token)
                await s.commit()
        try:
            await _follow_roles(portal, client, user_id, subject, tokens)
        except LoginRefused as err:  # the provider's answer is unusable: keep the roles
            log.warning("cannot read the roles of user %s at the provider check: %s",
                        user_id, err.message)
        return True

    return check


async def provider_sweep(portal: Portal) -> None:
    """Check, every recheck interval, the provider sessions no request checked (their
    users may be away, or use API tokens only): a user disabled at the provider loses
    logins and tokens within about two intervals even when Atrium sees no request from
    them. Runs until cancelled; replicas share the work through the check's claim."""
    check = portal.auth.provider_check
    interval = portal.settings.oidc_recheck_interval
    if check is None or interval <= 0:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            async with portal.db.session() as s:
                due = await logins.due_provider_checks(
                    s, dt.timedelta(seconds=interval),
                    dt.timedelta(seconds=portal.settings.session_idle_timeout))
            for digest in due:
                if not await check(digest):
                    portal.auth.forget(digest)
        except Exception:  # the next round tries again
            log.exception("provider session sweep failed")


async def _deprovision(portal: Portal, client: OidcClient, user_id: int, why: str) -> None:
    async with portal.db.session() as s:
        sessions, tokens = await logins.deprovision(s, user_id, client.mapping.managed_roles)
        await s.commit()
    for digest in sessions:
        portal.auth.forget(digest)
    for digest in tokens:
        portal.auth.revoke_digest(digest)
    portal.auth.principals.invalidate(user_id)
    portal.changed_user(user_id)  # open connections of the user close (announced)
    log.warning("user %s disabled at the provider (%s): %d login(s) and %d token(s) revoked",
                user_id, why, len(sessions), len(tokens))


async def _follow_roles(portal: Portal, client: OidcClient, user_id: int, subject: str,
                        tokens: dict[str, Any]) -> None:
    """Roles the provider manages follow its current claims, as at login: an admin group
    removed there ends the admin role here at this check (and the open connections it
    allowed). Only when the provider states the groups; an answer without them changes
    nothing."""
    access_token = tokens.get("access_token") if isinstance(
        tokens.get("access_token"), str) else None
    claims: dict[str, Any] = {}
    if isinstance(tokens.get("id_token"), str):
        claims = await client.validate(tokens["id_token"], nonce=None,
                                       access_token=access_token)
    info = await client.userinfo(access_token or "", subject)
    merged = {**info, **{k: v for k, v in claims.items() if k not in info or k == "sub"}}
    if not merged or claim(merged, client.mapping.groups) is None:
        return
    roles = client.mapping.identity({"sub": subject, **merged}).roles
    async with portal.db.session() as s:
        changed = await logins.set_managed_roles(s, user_id, roles,
                                                 client.mapping.managed_roles)
        await s.commit()
    if changed:
        log.info("roles of user %s changed at the provider: %s", user_id,
                 ",".join(sorted(r.value for r in roles)) or "-")
        # Announced apart: this check may run inside a re-check of open connections.
        portal.changed_user(user_id)


async def _subject(portal: Portal, user_id: int, issuer: str) -> str:
    async with portal.db.session() as s:
        return str(await s.scalar(select(UserIdentity.subject).where(
            UserIdentity.user_id == user_id, UserIdentity.issuer == issuer)) or "")
